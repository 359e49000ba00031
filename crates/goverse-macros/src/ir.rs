//! The intermediate form between parsing and expansion.

use proc_macro2::Ident;
use syn::{Attribute, ItemImpl, Type};

/// A parsed `#[goverse::object]` impl block.
pub(crate) struct ObjectIr {
    /// The impl block with `#[method]` markers removed.
    pub(crate) item: ItemImpl,
    /// The object's Rust type.
    pub(crate) self_ty: Type,
    /// The struct's identifier (for naming the stub).
    pub(crate) ident: Ident,
    /// The type name on the wire.
    pub(crate) type_name: String,
    pub(crate) methods: Vec<MethodIr>,
}

pub(crate) struct MethodIr {
    pub(crate) fn_ident: Ident,
    pub(crate) wire_name: String,
    pub(crate) mutable: bool,
    pub(crate) takes_ctx: bool,
    pub(crate) request: Type,
    pub(crate) response: Type,
    /// Doc comments, carried onto the stub.
    pub(crate) docs: Vec<Attribute>,
}
