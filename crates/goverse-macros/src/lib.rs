//! `#[goverse::object]` and `#[method]`.
//!
//! The work is split in three: `parse` reads the `impl` block into an intermediate form,
//! checking every `#[method]` signature and pointing errors at the offending token; `expand`
//! writes the `Dispatch` impl and the typed `…Ref` stub from it. On error the original item is
//! still emitted (without the `#[method]` markers) so the rest of the crate keeps type-checking.

use proc_macro::TokenStream;

mod expand;
mod ir;
mod parse;

/// Turns an inherent `impl` block into a GoVerse object type.
///
/// Methods marked `#[method]` become callable by name; each must be shaped
/// `async fn name(&self | &mut self, [ctx: &ObjectContext,] request: Req) -> Result<Resp, E>`
/// with prost messages `Req` and `Resp`. `&self` methods are reads (they may run together),
/// `&mut self` methods are writes (one at a time).
///
/// - `#[goverse::object(name = "Other")]` sets the type name (default: the struct's name).
/// - `#[method(name = "Other")]` sets a method's wire name (default: the fn name in
///   UpperCamelCase, `add` → `Add`).
///
/// Also generates `<Type>Ref`, a typed client stub: `CounterRef::new(id).add(&node_or_ctx, req)`.
#[proc_macro_attribute]
pub fn object(attr: TokenStream, item: TokenStream) -> TokenStream {
    let attr = proc_macro2::TokenStream::from(attr);
    let item = proc_macro2::TokenStream::from(item);
    match parse::object(attr, item.clone()) {
        Ok(ir) => expand::object(&ir).into(),
        Err((errors, cleaned)) => {
            let errors = errors.to_compile_error();
            let original = cleaned.unwrap_or(item);
            quote::quote!(#original #errors).into()
        }
    }
}

/// Marks a method of a `#[goverse::object]` impl block as callable. Only meaningful there.
#[proc_macro_attribute]
pub fn method(_attr: TokenStream, item: TokenStream) -> TokenStream {
    let item = proc_macro2::TokenStream::from(item);
    let error = syn::Error::new(
        proc_macro2::Span::call_site(),
        "#[method] only has meaning inside an impl block marked #[goverse::object]",
    )
    .to_compile_error();
    quote::quote!(#item #error).into()
}
