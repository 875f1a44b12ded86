//! The `#[dtask]` attribute of [dtasks](https://docs.rs/dtasks). Use it through the
//! `dtasks` crate, which re-exports it.

use proc_macro::TokenStream;
use proc_macro2::{Span, TokenStream as TokenStream2};
use quote::{format_ident, quote};
use syn::parse::{Parse, ParseStream};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{Error, FnArg, ItemFn, LitStr, Pat, ReturnType, Token, Type};

mod snapshot;

/// Turns an `async fn` of serde arguments into a DTask.
///
/// Calling the function returns a `Call<Output>` instead of running the body; the body
/// runs as an instance of its own when that call is awaited inside another DTask,
/// spawned, or started with a `Client`. The function is registered under its name
/// (`#[dtask(name = "billing.charge")]` chooses another) so that workers can find it.
///
/// Arguments and the output must be owned serde types (`Serialize + DeserializeOwned`).
/// References, `self`, generics and non-async functions are compile errors.
///
/// `#[dtask(snapshot)]` selects the snapshot execution model: the body is compiled into a
/// state machine whose suspended state (the locals still needed after each distributed
/// await) is saved and resumed, instead of being replayed from the top. Any code may then
/// run between awaits. `accepts = "<fingerprint>"` (repeatable) declares that the code
/// still resumes instances suspended by an earlier version with that fingerprint as they
/// are; `migrate(from = "<fingerprint>", with = path::to::f)` (repeatable) resumes them
/// after `f`, a `fn(dtasks::SavedMachine) -> Result<dtasks::SavedMachine, String>`,
/// rewrote the locals they saved into those the new code saves at that await.
#[proc_macro_attribute]
pub fn dtask(attr: TokenStream, item: TokenStream) -> TokenStream {
    let args = syn::parse_macro_input!(attr as Args);
    let func = syn::parse_macro_input!(item as ItemFn);
    match expand(args, func) {
        Ok(ts) => ts.into(),
        Err(e) => e.to_compile_error().into(),
    }
}

#[derive(Default)]
struct Args {
    name: Option<LitStr>,
    snapshot: bool,
    accepts: Vec<u64>,
    /// `migrate(from = "<fingerprint>", with = path)`: the fingerprint and the function.
    migrations: Vec<(u64, syn::Path)>,
}

/// A fingerprint in hexadecimal, as the error that refused a resume printed it.
fn parse_fingerprint(lit: &LitStr, option: &str) -> syn::Result<u64> {
    u64::from_str_radix(lit.value().trim_start_matches("0x"), 16).map_err(|_| {
        Error::new(
            lit.span(),
            format!(
                "`{option}` takes a fingerprint in hexadecimal, as the error that refused the \
                 resume printed it (e.g. \"1f2e3d4c5b6a7988\")"
            ),
        )
    })
}

/// The inside of `migrate(from = "<fingerprint>", with = path::to::f)`, in either order.
fn parse_migration(input: ParseStream<'_>, span: Span) -> syn::Result<(u64, syn::Path)> {
    let mut from = None;
    let mut with = None;
    while !input.is_empty() {
        let key: syn::Ident = input.parse()?;
        input.parse::<Token![=]>()?;
        if key == "from" {
            let lit: LitStr = input.parse()?;
            from = Some(parse_fingerprint(&lit, "migrate(from = ..)")?);
        } else if key == "with" {
            with = Some(input.parse::<syn::Path>()?);
        } else {
            return Err(Error::new(
                key.span(),
                format!(
                    "unknown `migrate` option `{key}`; write \
                     `migrate(from = \"<fingerprint>\", with = path::to::function)`"
                ),
            ));
        }
        if !input.is_empty() {
            input.parse::<Token![,]>()?;
        }
    }
    match (from, with) {
        (Some(from), Some(with)) => Ok((from, with)),
        _ => Err(Error::new(
            span,
            "`migrate` needs both `from = \"<fingerprint>\"` and `with = path::to::function` \
             (a `fn(dtasks::SavedMachine) -> Result<dtasks::SavedMachine, String>`)",
        )),
    }
}

impl Parse for Args {
    fn parse(input: ParseStream<'_>) -> syn::Result<Self> {
        let mut args = Args::default();
        while !input.is_empty() {
            let key: syn::Ident = input.parse()?;
            if key == "name" {
                input.parse::<Token![=]>()?;
                let lit: LitStr = input.parse()?;
                validate_name(&lit.value(), lit.span())?;
                args.name = Some(lit);
            } else if key == "snapshot" {
                args.snapshot = true;
            } else if key == "accepts" {
                input.parse::<Token![=]>()?;
                let lit: LitStr = input.parse()?;
                args.accepts.push(parse_fingerprint(&lit, "accepts")?);
            } else if key == "migrate" {
                let inner;
                syn::parenthesized!(inner in input);
                args.migrations.push(parse_migration(&inner, key.span())?);
            } else {
                return Err(Error::new(
                    key.span(),
                    format!(
                        "unknown #[dtask] option `{key}`; the options are `name = \"...\"`, \
                         `snapshot`, `accepts = \"<fingerprint>\"` and \
                         `migrate(from = \"<fingerprint>\", with = path::to::function)`"
                    ),
                ));
            }
            if !input.is_empty() {
                input.parse::<Token![,]>()?;
            }
        }
        Ok(args)
    }
}

fn validate_name(name: &str, span: Span) -> syn::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 200
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Error::new(
            span,
            "a DTask name has 1 to 200 characters among A-Z a-z 0-9 - _ . : (it names queues)",
        ))
    }
}

/// Finds references, lifetimes and `impl Trait` in a type.
#[derive(Default)]
struct Borrowed {
    found: Option<(Span, &'static str)>,
}

impl<'ast> Visit<'ast> for Borrowed {
    fn visit_type_reference(&mut self, r: &'ast syn::TypeReference) {
        self.found
            .get_or_insert((r.span(), "a reference cannot travel in a message: take an owned value (`String` for `&str`, `Vec<T>` for `&[T]`)"));
    }
    fn visit_lifetime(&mut self, l: &'ast syn::Lifetime) {
        self.found.get_or_insert((
            l.span(),
            "a borrowed type cannot travel in a message: take an owned value",
        ));
    }
    fn visit_type_impl_trait(&mut self, t: &'ast syn::TypeImplTrait) {
        self.found.get_or_insert((
            t.span(),
            "`impl Trait` is generic; a DTask's types must be concrete serde types",
        ));
    }
    fn visit_type_ptr(&mut self, t: &'ast syn::TypePtr) {
        self.found
            .get_or_insert((t.span(), "a raw pointer cannot travel in a message"));
    }
}

fn check_type(ty: &Type, what: &str) -> syn::Result<()> {
    let mut v = Borrowed::default();
    v.visit_type(ty);
    match v.found {
        Some((span, why)) => Err(Error::new(
            span,
            format!("{what} of a #[dtask] function: {why}"),
        )),
        None => Ok(()),
    }
}

fn expand(args: Args, func: ItemFn) -> syn::Result<TokenStream2> {
    let sig = &func.sig;
    if sig.asyncness.is_none() {
        return Err(Error::new(
            sig.fn_token.span(),
            "#[dtask] requires an `async fn`: a DTask's body is asynchronous (write `async fn`)",
        ));
    }
    if let Some(c) = &sig.constness {
        return Err(Error::new(c.span(), "#[dtask] functions cannot be `const`"));
    }
    if let Some(u) = &sig.unsafety {
        return Err(Error::new(
            u.span(),
            "#[dtask] functions cannot be `unsafe`",
        ));
    }
    if let Some(abi) = &sig.abi {
        return Err(Error::new(
            abi.span(),
            "#[dtask] functions cannot have an ABI",
        ));
    }
    if let Some(v) = &sig.variadic {
        return Err(Error::new(
            v.span(),
            "#[dtask] functions cannot be variadic",
        ));
    }
    if !sig.generics.params.is_empty() || sig.generics.where_clause.is_some() {
        return Err(Error::new(
            sig.generics.span(),
            "#[dtask] functions cannot be generic: a DTask is registered under one name with \
             one argument type; write a non-generic #[dtask] per type",
        ));
    }
    let name_str = match &args.name {
        Some(lit) => lit.value(),
        None => sig.ident.to_string(),
    };
    let ident = &sig.ident;
    let vis = &func.vis;
    let attrs = &func.attrs;
    let body = &func.block;

    let mut outer_params = Vec::new();
    let mut arg_idents = Vec::new();
    let mut inner_params = Vec::new();
    let mut types = Vec::new();
    let mut params = Vec::new();
    for (i, arg) in sig.inputs.iter().enumerate() {
        match arg {
            FnArg::Receiver(r) => {
                return Err(Error::new(
                    r.span(),
                    "#[dtask] functions cannot take `self`: a DTask is a free function of \
                     serializable arguments; pass the data it needs as arguments",
                ))
            }
            FnArg::Typed(pt) => {
                check_type(&pt.ty, "an argument")?;
                let id = match &*pt.pat {
                    Pat::Ident(pi) if pi.by_ref.is_none() && pi.subpat.is_none() => {
                        pi.ident.clone()
                    }
                    _ => format_ident!("__dtask_arg{}", i),
                };
                let ty = &pt.ty;
                let pat = &pt.pat;
                outer_params.push(quote! { #id: #ty });
                inner_params.push(quote! { #pat: #ty });
                params.push(((**pat).clone(), (**ty).clone()));
                arg_idents.push(id);
                types.push(ty.clone());
            }
        }
    }
    let output: Type = match &sig.output {
        ReturnType::Default => syn::parse_quote!(()),
        ReturnType::Type(_, ty) => {
            check_type(ty, "the output")?;
            (**ty).clone()
        }
    };
    let name_lit = LitStr::new(&name_str, ident.span());
    let body_ident = format_ident!("__dtask_body_{}", ident);
    if !args.snapshot && !args.accepts.is_empty() {
        return Err(Error::new(
            Span::call_site(),
            "`accepts` applies to `#[dtask(snapshot)]` functions only",
        ));
    }
    if !args.snapshot && !args.migrations.is_empty() {
        return Err(Error::new(
            Span::call_site(),
            "`migrate` applies to `#[dtask(snapshot)]` functions only; a replay-model DTask \
             changes its code with `DTask::patched`",
        ));
    }
    let stub = quote! {
        #(#attrs)*
        #vis fn #ident(#(#outer_params),*) -> ::dtasks::Call<#output> {
            ::dtasks::__private::call::<#output, _>(#name_lit, &(#(#arg_idents,)*))
        }
    };
    if args.snapshot {
        return snapshot::expand(snapshot::Parts {
            func: &func,
            stub,
            name_lit,
            arg_idents,
            params,
            output,
            accepts: args.accepts,
            migrations: args.migrations,
        });
    }

    Ok(quote! {
        #stub

        const _: () = {
            async fn #body_ident(#(#inner_params),*) -> #output #body

            fn __dtask_run(
                input: &[u8],
            ) -> ::core::result::Result<::dtasks::__private::BodyFuture, ::dtasks::Failure> {
                let (#(#arg_idents,)*): (#(#types,)*) =
                    ::dtasks::__private::decode_args(#name_lit, input)?;
                ::core::result::Result::Ok(::dtasks::__private::body(#body_ident(#(#arg_idents),*)))
            }

            fn __dtask_type_id() -> ::core::any::TypeId {
                ::dtasks::__private::type_id_of(&#ident)
            }

            ::dtasks::__private::inventory::submit! {
                ::dtasks::__private::Registration::new(
                    #name_lit,
                    ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                    __dtask_type_id,
                    __dtask_run,
                )
            }
        };
    })
}
