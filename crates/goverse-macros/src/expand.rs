//! Writes the `Dispatch` impl and the typed stub from [`ObjectIr`].

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::spanned::Spanned;

use crate::ir::{MethodIr, ObjectIr};

pub(crate) fn object(ir: &ObjectIr) -> TokenStream {
    let p = quote!(::goverse::__private);
    let item = &ir.item;
    let self_ty = &ir.self_ty;
    let type_name = &ir.type_name;

    let specs = ir.methods.iter().map(|m| {
        let name = &m.wire_name;
        let (req, resp) = (&m.request, &m.response);
        let kind = if m.mutable {
            quote!(Write)
        } else {
            quote!(Read)
        };
        quote! {
            #p::MethodSpec {
                name: #name,
                kind: #p::MethodKind::#kind,
                request: #p::message_name::<#req>,
                response: #p::message_name::<#resp>,
            }
        }
    });

    let arm = |index: usize, m: &MethodIr| {
        let fn_ident = &m.fn_ident;
        let req = &m.request;
        let call = if m.takes_ctx {
            quote!(self.#fn_ident(ctx, request))
        } else {
            quote!(self.#fn_ident(request))
        };
        // Spanned on the response type, so a response that is not a message is reported there.
        let wrap = quote_spanned!(m.response.span()=> #p::Payload::typed(response));
        quote! {
            #index => {
                let request = #p::decode_request::<Self, #req>(#index, request)?;
                match #call.await {
                    ::core::result::Result::Ok(response) => ::core::result::Result::Ok(#wrap),
                    ::core::result::Result::Err(err) => ::core::result::Result::Err(#p::method_error(err)),
                }
            }
        }
    };
    let mut_arms = ir.methods.iter().enumerate().map(|(i, m)| arm(i, m));
    let ref_arms = ir
        .methods
        .iter()
        .enumerate()
        .filter(|(_, m)| !m.mutable)
        .map(|(i, m)| arm(i, m));

    // dispatch_mut handles every method; dispatch_ref only the reads.
    let dispatch = |name: TokenStream, receiver: TokenStream, arms: Vec<TokenStream>| {
        quote! {
            #[allow(unused_variables, clippy::match_single_binding)]
            fn #name(
                #receiver,
                method: usize,
                ctx: &#p::ObjectContext,
                request: #p::Payload,
            ) -> impl ::core::future::Future<Output = ::core::result::Result<#p::Payload, #p::CallError>> + ::core::marker::Send {
                async move {
                    match method {
                        #(#arms)*
                        _ => ::core::result::Result::Err(#p::bad_method_index::<Self>(method)),
                    }
                }
            }
        }
    };
    let dispatch_mut = dispatch(quote!(dispatch_mut), quote!(&mut self), mut_arms.collect());
    let dispatch_ref = dispatch(quote!(dispatch_ref), quote!(&self), ref_arms.collect());

    let stub = format_ident!("{}Ref", ir.ident);
    let stub_doc = format!(
        "Typed client stub for `{type_name}` objects: calls move typed messages, resolved at compile time."
    );
    let stub_methods = ir.methods.iter().enumerate().map(|(index, m)| {
        let fn_ident = &m.fn_ident;
        let (req, resp) = (&m.request, &m.response);
        let docs = &m.docs;
        let wire = format!("Calls `{type_name}.{}`.", m.wire_name);
        quote! {
            #(#docs)*
            #[doc = ""]
            #[doc = #wire]
            pub async fn #fn_ident(
                &self,
                caller: &(impl #p::Caller + ?Sized),
                request: #req,
            ) -> ::core::result::Result<#resp, #p::CallError> {
                #p::call_typed::<#self_ty, #req, #resp>(
                    caller,
                    &self.id,
                    #index,
                    request,
                    self.timeout,
                    self.reliable.as_deref(),
                ).await
            }
        }
    });

    quote! {
        #item

        impl #p::Dispatch for #self_ty {
            const TYPE_NAME: &'static str = #type_name;
            const METHODS: &'static [#p::MethodSpec] = &[#(#specs),*];

            #dispatch_mut
            #dispatch_ref
        }

        #[doc = #stub_doc]
        #[derive(Clone, Debug)]
        pub struct #stub {
            id: #p::ObjectId,
            timeout: ::core::option::Option<#p::Duration>,
            reliable: ::core::option::Option<#p::Arc<str>>,
        }

        impl #stub {
            /// A stub for the object with this ID (activated on first call).
            pub fn new(id: impl ::core::convert::Into<#p::ObjectId>) -> Self {
                Self {
                    id: id.into(),
                    timeout: ::core::option::Option::None,
                    reliable: ::core::option::Option::None,
                }
            }

            /// The object's ID.
            pub fn id(&self) -> &#p::ObjectId {
                &self.id
            }

            /// Calls through this stub time out after `timeout` (default: the node's).
            pub fn with_timeout(mut self, timeout: #p::Duration) -> Self {
                self.timeout = ::core::option::Option::Some(timeout);
                self
            }

            /// A stub whose calls are reliable calls with `call_id`: the first runs the method and
            /// records its outcome with the object's new state; a retry with the same call id
            /// (after a timeout, a crash, a restart) returns the recorded outcome without running
            /// it again. Retrying after any error is safe. The type must be persistent.
            pub fn call_reliable(&self, call_id: impl ::core::convert::Into<#p::Arc<str>>) -> Self {
                Self {
                    id: self.id.clone(),
                    timeout: self.timeout,
                    reliable: ::core::option::Option::Some(call_id.into()),
                }
            }

            #(#stub_methods)*
        }
    }
}
