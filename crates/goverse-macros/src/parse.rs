//! Reads an impl block into [`ObjectIr`], checking every `#[method]`.

use heck::ToUpperCamelCase;
use proc_macro2::TokenStream;
use syn::spanned::Spanned;
use syn::{
    Attribute, FnArg, GenericArgument, ImplItem, ItemImpl, LitStr, PathArguments, ReturnType, Type,
};

use crate::ir::{MethodIr, ObjectIr};

/// On failure: the errors, and the item with `#[method]` markers removed (when it parsed).
type Failure = (syn::Error, Option<TokenStream>);

/// Names the stub reserves for itself.
const RESERVED: [&str; 3] = ["new", "id", "with_timeout"];

fn name_arg(tokens: TokenStream, what: &str) -> syn::Result<Option<String>> {
    if tokens.is_empty() {
        return Ok(None);
    }
    let mut name = None;
    let parser = syn::meta::parser(|meta| {
        if meta.path.is_ident("name") {
            let value: LitStr = meta.value()?.parse()?;
            if value.value().is_empty()
                || value
                    .value()
                    .contains(|c: char| c.is_whitespace() || c == '/')
            {
                return Err(syn::Error::new(
                    value.span(),
                    format!("{what} name must be non-empty, without spaces or '/'"),
                ));
            }
            name = Some(value.value());
            Ok(())
        } else {
            Err(meta.error(format!("unknown {what} option; expected `name = \"...\"`")))
        }
    });
    syn::parse::Parser::parse2(parser, tokens)?;
    Ok(name)
}

fn is_method_attr(attr: &Attribute) -> bool {
    attr.path()
        .segments
        .last()
        .is_some_and(|s| s.ident == "method")
}

fn combine(errors: &mut Option<syn::Error>, err: syn::Error) {
    match errors {
        Some(all) => all.combine(err),
        None => *errors = Some(err),
    }
}

pub(crate) fn object(attr: TokenStream, item: TokenStream) -> Result<ObjectIr, Failure> {
    let mut item: ItemImpl = syn::parse2(item).map_err(|e| (e, None))?;
    let mut errors: Option<syn::Error> = None;
    let mut methods = Vec::new();

    // Strip the markers first, so that whatever happens the item we emit compiles on its own.
    let mut marked = Vec::new();
    for impl_item in &mut item.items {
        if let ImplItem::Fn(f) = impl_item {
            let (mine, rest): (Vec<_>, Vec<_>) = f.attrs.drain(..).partition(is_method_attr);
            f.attrs = rest;
            marked.push(mine.into_iter().next());
        } else {
            marked.push(None);
        }
    }
    let cleaned = quote::quote!(#item);
    let fail = |e: syn::Error| (e, Some(cleaned.clone()));

    let type_name_override = name_arg(attr, "type").map_err(fail)?;
    if let Some((_, path, _)) = &item.trait_ {
        return Err(fail(syn::Error::new_spanned(
            path,
            "#[goverse::object] goes on an inherent impl block (impl Type { ... }), not a trait impl",
        )));
    }
    if !item.generics.params.is_empty() {
        return Err(fail(syn::Error::new_spanned(
            &item.generics,
            "object types cannot be generic",
        )));
    }
    let ident = match &*item.self_ty {
        Type::Path(p) if p.qself.is_none() => p.path.segments.last().map(|s| s.ident.clone()),
        _ => None,
    };
    let Some(ident) = ident else {
        return Err(fail(syn::Error::new_spanned(
            &item.self_ty,
            "expected a named struct type",
        )));
    };

    for (impl_item, marker) in item.items.iter().zip(marked) {
        let (ImplItem::Fn(f), Some(marker)) = (impl_item, marker) else {
            continue;
        };
        let override_name = match &marker.meta {
            syn::Meta::Path(_) => Ok(None),
            syn::Meta::List(list) => name_arg(list.tokens.clone(), "method"),
            syn::Meta::NameValue(nv) => Err(syn::Error::new_spanned(
                nv,
                "expected #[method] or #[method(name = \"...\")]",
            )),
        };
        match override_name.and_then(|name| method(f, name)) {
            Ok(m) => methods.push(m),
            Err(err) => combine(&mut errors, err),
        }
    }

    // Wire names must be unique: the second of two clashing methods is the one reported.
    for (i, m) in methods.iter().enumerate() {
        if let Some(first) = methods[..i].iter().find(|o| o.wire_name == m.wire_name) {
            combine(
                &mut errors,
                syn::Error::new(
                    m.fn_ident.span(),
                    format!(
                        "duplicate method name {:?}: `{}` has it already",
                        m.wire_name, first.fn_ident
                    ),
                ),
            );
        }
    }
    if let Some(errors) = errors {
        return Err(fail(errors));
    }
    Ok(ObjectIr {
        self_ty: (*item.self_ty).clone(),
        type_name: type_name_override.unwrap_or_else(|| ident.to_string()),
        ident,
        item,
        methods,
    })
}

fn method(f: &syn::ImplItemFn, name: Option<String>) -> syn::Result<MethodIr> {
    let sig = &f.sig;
    if sig.asyncness.is_none() {
        return Err(syn::Error::new(
            sig.fn_token.span,
            "#[method] functions must be `async fn`",
        ));
    }
    if !sig.generics.params.is_empty() {
        return Err(syn::Error::new_spanned(
            &sig.generics,
            "#[method] functions cannot be generic",
        ));
    }
    if let Some(where_clause) = &sig.generics.where_clause {
        return Err(syn::Error::new_spanned(
            where_clause,
            "#[method] functions cannot have a where clause",
        ));
    }
    let mut inputs = sig.inputs.iter();
    let mutable = match inputs.next() {
        Some(FnArg::Receiver(r)) => {
            if r.reference.is_none() {
                return Err(syn::Error::new_spanned(
                    r,
                    "#[method] functions take `&self` or `&mut self`, not `self` by value",
                ));
            }
            r.mutability.is_some()
        }
        _ => {
            return Err(syn::Error::new(
                sig.ident.span(),
                "#[method] functions take `&self` or `&mut self` first",
            ));
        }
    };
    let rest: Vec<&syn::PatType> = inputs
        .map(|arg| match arg {
            FnArg::Typed(t) => Ok(t),
            FnArg::Receiver(r) => Err(syn::Error::new_spanned(r, "unexpected receiver")),
        })
        .collect::<syn::Result<_>>()?;
    let (takes_ctx, request) = match rest.as_slice() {
        [request] => (false, request),
        [ctx, request] => {
            if !matches!(&*ctx.ty, Type::Reference(r) if r.mutability.is_none()) {
                return Err(syn::Error::new_spanned(
                    &ctx.ty,
                    "the context is taken by shared reference: `ctx: &ObjectContext`",
                ));
            }
            (true, request)
        }
        [] => {
            return Err(syn::Error::new(
                sig.paren_token.span.join(),
                "#[method] functions take a request message: `request: Req`",
            ));
        }
        [_, _, extra, ..] => {
            return Err(syn::Error::new_spanned(
                extra,
                "#[method] functions take at most a context and a request",
            ));
        }
    };
    if let Type::Reference(r) = &*request.ty {
        return Err(syn::Error::new_spanned(
            r,
            "the request is taken by value (`request: Req`), not by reference",
        ));
    }
    let response = match &sig.output {
        ReturnType::Type(_, ty) => result_ok_type(ty),
        ReturnType::Default => None,
    };
    let Some(response) = response else {
        let span = match &sig.output {
            ReturnType::Type(_, ty) => ty.span(),
            ReturnType::Default => sig.paren_token.span.join(),
        };
        return Err(syn::Error::new(
            span,
            "#[method] functions return `Result<Response, Error>`",
        ));
    };
    if let Some(name) = &name
        && name.is_empty()
    {
        return Err(syn::Error::new(sig.ident.span(), "empty method name"));
    }
    if RESERVED.contains(&sig.ident.to_string().as_str()) {
        return Err(syn::Error::new(
            sig.ident.span(),
            format!(
                "`{}` clashes with the generated stub's own `{}`; rename the fn (#[method(name = \"...\")] keeps the wire name)",
                sig.ident, sig.ident
            ),
        ));
    }
    let wire_name = name.unwrap_or_else(|| sig.ident.to_string().to_upper_camel_case());
    Ok(MethodIr {
        fn_ident: sig.ident.clone(),
        wire_name,
        mutable,
        takes_ctx,
        request: (*request.ty).clone(),
        response,
        docs: f
            .attrs
            .iter()
            .filter(|a| a.path().is_ident("doc"))
            .cloned()
            .collect(),
    })
}

/// `Result<R, ...>` → `R` (any path ending in `Result`, so aliases like `io::Result<R>` work).
fn result_ok_type(ty: &Type) -> Option<Type> {
    let Type::Path(path) = ty else { return None };
    let last = path.path.segments.last()?;
    if last.ident != "Result" {
        return None;
    }
    let PathArguments::AngleBracketed(args) = &last.arguments else {
        return None;
    };
    match args.args.first()? {
        GenericArgument::Type(ok) => Some(ok.clone()),
        _ => None,
    }
}
