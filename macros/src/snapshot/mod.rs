//! `#[dtask(snapshot)]`: compiles an async fn into a resumable, serializable machine.
//!
//! The body is lowered ([`lower`]) so that every `.await` is a point whose result goes to
//! a `let`, an assignment or nowhere; for each point, name resolution ([`resolve`]) finds
//! the locals that the code after it uses; code generation ([`gen`]) writes one async block
//! that either starts at the top or resumes at a point with those locals restored.

mod gen;
mod ir;
mod lower;
mod resolve;

use proc_macro2::{TokenStream, TokenTree};
use quote::{format_ident, quote};
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::{Ident, ItemFn, LitStr, Pat, Type};

use gen::{codec_var, kind_var, ty_var, Gen};
use ir::Stmt;

/// What the shared part of `#[dtask]` computed for the function.
pub(crate) struct Parts<'a> {
    pub(crate) func: &'a ItemFn,
    /// The call stub (`fn name(args) -> Call<Output>`).
    pub(crate) stub: TokenStream,
    pub(crate) name_lit: LitStr,
    pub(crate) arg_idents: Vec<Ident>,
    /// Parameter patterns and types.
    pub(crate) params: Vec<(Pat, Type)>,
    pub(crate) output: Type,
    pub(crate) accepts: Vec<u64>,
    pub(crate) migrations: Vec<(u64, syn::Path)>,
}

pub(crate) fn expand(parts: Parts<'_>) -> syn::Result<TokenStream> {
    let func = parts.func;
    let mut forbidden = lower::Forbidden { errors: Vec::new() };
    forbidden.visit_block(&func.block);
    if let Some(mut e) = forbidden.errors.pop() {
        for other in forbidden.errors {
            e.combine(other);
        }
        return Err(e);
    }

    let mut lw = lower::Lowerer::new();
    let param_binds: Vec<Vec<ir::Bind>> =
        parts.params.iter().map(|(p, _)| lw.pat_binds(p)).collect();
    let body = lw.block(&func.block)?;
    let flat_params: Vec<ir::Bind> = param_binds.iter().flatten().cloned().collect();
    let paths = resolve::paths(&body);
    let needs: Vec<resolve::Needs> = paths
        .iter()
        .map(|p| resolve::needs(&flat_params, &body, p, &lw.binds))
        .collect();
    gen::check_saved(&lw.binds, &needs)?;
    let fields = Gen::name_fields(&lw.binds, &needs);
    let g = Gen {
        binds: &lw.binds,
        needs: &needs,
        fields: fields.clone(),
    };

    let name_lit = &parts.name_lit;
    let output = &parts.output;
    let ident = &func.sig.ident;
    let types: Vec<&Type> = parts.params.iter().map(|(_, t)| t).collect();
    let arg_idents = &parts.arg_idents;
    let arg_vars: Vec<Ident> = (0..types.len())
        .map(|i| format_ident!("__dt_a{}", i))
        .collect();
    let arg_pats: Vec<&Pat> = parts.params.iter().map(|(p, _)| p).collect();

    // Items of the body's top level are declared once, outside the async block.
    let hoisted = body
        .stmts
        .iter()
        .filter(|s| gen::is_item(s))
        .map(|s| match s {
            Stmt::Plain { stmt, .. } => quote! { #stmt },
            _ => TokenStream::new(),
        });

    let type_params: Vec<Ident> = fields.values().map(|f| format_ident!("L_{}", f)).collect();
    let variants = needs.iter().enumerate().map(|(j, n)| {
        let v = format_ident!("P{}", j);
        let fs = n.saved.iter().map(|id| {
            let f = &fields[id];
            let l = format_ident!("L_{}", f);
            quote! { #f: #l }
        });
        quote! { #v { #(#fs,)* __dt_pending: ::core::option::Option<__dt::Pending> } }
    });
    let generics = (!type_params.is_empty()).then(|| quote! { <#(#type_params),*> });
    let ty_decls = fields.values().map(|f| {
        let t = ty_var(f);
        quote! { let #t = __dt::Ty::new(); }
    });
    let kind_decls = (0..needs.len() as u32).map(|j| {
        let k = kind_var(j);
        quote! { let #k = __dt::Ty::new(); }
    });
    // One codec per saved local and point: where an unserializable local is reported.
    let codec_decls = needs.iter().enumerate().flat_map(|(j, n)| {
        let fields = &fields;
        let binds = &lw.binds;
        n.saved.iter().map(move |id| {
            let f = &fields[id];
            let (c, k, t) = (codec_var(j as u32, f), kind_var(j as u32), ty_var(f));
            let span = binds[*id].ident.span();
            let dt = quote! { __dt };
            quote::quote_spanned! {span=> let #c = #dt::codec(&#k, &#t); }
        })
    });
    let decode_arms = needs.iter().enumerate().map(|(j, n)| {
        let (v, k, jl) = (format_ident!("P{}", j), kind_var(j as u32), j as u32);
        let fs = n.saved.iter().map(|id| {
            let f = &fields[id];
            let c = codec_var(j as u32, f);
            quote! { #f: __dt_r.take(&#c)? }
        });
        quote! {
            #jl => {
                let mut __dt_r = __dt_resume.reader(&#k);
                let __dt_at = __At::#v {
                    #(#fs,)*
                    __dt_pending: ::core::option::Option::Some(__dt_resume.pending()),
                };
                __dt_r.finish()?;
                __dt_at
            }
        }
    });
    let normal = g.block(&body, true);
    let cont_arms = needs.iter().enumerate().map(|(j, n)| {
        let v = format_ident!("P{}", j);
        let fs = n.saved.iter().map(|id| {
            let f = &fields[id];
            let var = format_ident!("__dt_s_{}", f);
            quote! { #f: #var }
        });
        let mut used = Vec::new();
        let code = g.cont(j, &body, &paths[j], &flat_params, 0, true, &mut used);
        quote! {
            __At::#v { #(#fs,)* mut __dt_pending } => { #code }
        }
    });
    let fingerprint = fingerprint(func);
    let accepts = &parts.accepts;
    let stub = &parts.stub;
    let registration = if parts.migrations.is_empty() {
        quote! {
            ::dtasks::__private::inventory::submit! {
                ::dtasks::__private::Registration::snapshot(
                    #name_lit,
                    ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                    __dtask_type_id,
                    __dtask_run,
                    #fingerprint,
                    &[#(#accepts),*],
                )
            }
        }
    } else {
        let migrations = parts.migrations.iter().map(|(from, with)| {
            quote::quote_spanned! {with.span()=>
                (#from, #with as ::dtasks::__private::MigrateFn)
            }
        });
        quote! {
            ::dtasks::__private::inventory::submit! {
                ::dtasks::__private::Registration::snapshot_migrating(
                    #name_lit,
                    ::core::concat!(::core::module_path!(), "::", ::core::stringify!(#ident)),
                    __dtask_type_id,
                    __dtask_run,
                    #fingerprint,
                    &[#(#accepts),*],
                    &[#(#migrations),*],
                )
            }
        }
    };

    Ok(quote! {
        #stub

        const _: () = {
            #[allow(
                unused_mut,
                unused_variables,
                unused_assignments,
                unreachable_code,
                irrefutable_let_patterns,
                non_camel_case_types,
                non_snake_case,
                clippy::all
            )]
            fn __dtask_run(
                input: &[u8],
                __dt_resume: ::core::option::Option<::dtasks::__private::snapshot::Resume<'_>>,
            ) -> ::core::result::Result<::dtasks::__private::BodyFuture, ::dtasks::Failure> {
                use ::dtasks::__private::snapshot as __dt;
                #[allow(unused_imports)]
                use __dt::{ProbeDist as _, ProbeLocal as _};
                #(#hoisted)*

                /// Where the machine starts: at the top, or at an await with its saved locals.
                enum __At #generics {
                    Start(#(#types),*),
                    #(#variants,)*
                }

                #(#ty_decls)*
                #(#kind_decls)*
                #(#codec_decls)*
                let __dt_at = match __dt_resume {
                    ::core::option::Option::None => {
                        let (#(#arg_idents,)*): (#(#types,)*) =
                            ::dtasks::__private::decode_args(#name_lit, input)?;
                        __At::Start(#(#arg_idents),*)
                    }
                    ::core::option::Option::Some(__dt_resume) => match __dt_resume.point() {
                        #(#decode_arms)*
                        __dt_p => return ::core::result::Result::Err(__dt::bad_point(__dt_p)),
                    },
                };
                ::core::result::Result::Ok(::dtasks::__private::body::<#output, _>(async move {
                    match __dt_at {
                        __At::Start(#(#arg_vars),*) => {
                            #(let #arg_pats: #types = #arg_vars;)*
                            #normal
                        }
                        #(#cont_arms)*
                    }
                }))
            }

            fn __dtask_type_id() -> ::core::any::TypeId {
                ::dtasks::__private::type_id_of(&#ident)
            }

            #registration
        };
    })
}

/// A stable hash of the function's code: its tokens, written one per space so that the
/// compiler's formatting of token streams does not matter.
fn fingerprint(func: &ItemFn) -> u64 {
    fn walk(ts: TokenStream, out: &mut String) {
        for tt in ts {
            match tt {
                TokenTree::Group(g) => {
                    let (open, close) = match g.delimiter() {
                        proc_macro2::Delimiter::Parenthesis => ("(", ")"),
                        proc_macro2::Delimiter::Brace => ("{", "}"),
                        proc_macro2::Delimiter::Bracket => ("[", "]"),
                        proc_macro2::Delimiter::None => ("", ""),
                    };
                    out.push_str(open);
                    out.push(' ');
                    walk(g.stream(), out);
                    out.push_str(close);
                }
                TokenTree::Ident(i) => out.push_str(&i.to_string()),
                TokenTree::Punct(p) => out.push(p.as_char()),
                TokenTree::Literal(l) => out.push_str(&l.to_string()),
            }
            out.push(' ');
        }
    }
    let sig = &func.sig;
    let block = &func.block;
    let mut text = String::new();
    walk(quote! { #sig #block }, &mut text);
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in text.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod fingerprints {
    fn fp(src: &str) -> u64 {
        super::fingerprint(&syn::parse_str(src).expect("a function"))
    }

    #[test]
    fn the_fingerprint_depends_on_the_code_not_its_layout() {
        let a = fp("async fn f(x: u64) -> u64 { let y = g(x).await; y + 1 }");
        let b = fp("async fn f(x: u64)->u64{\n    let y = g(x)\n        .await;\n    y+1\n}");
        assert_eq!(a, b);
        assert_ne!(
            a,
            fp("async fn f(x: u64) -> u64 { let y = g(x).await; y + 2 }")
        );
        assert_ne!(
            a,
            fp("async fn f(x: u32) -> u64 { let y = g(x).await; y + 1 }")
        );
    }
}

#[cfg(test)]
mod golden {
    //! The expansion of each `tests/golden/<name>.rs` is compared with
    //! `tests/golden/<name>.expanded.rs` (formatted). `UPDATE_GOLDEN=1` rewrites them.

    use std::path::Path;

    fn expand_file(src: &str) -> String {
        let file: syn::File = syn::parse_str(src).expect("the golden input parses");
        let mut out = proc_macro2::TokenStream::new();
        for item in file.items {
            let syn::Item::Fn(mut func) = item else {
                continue;
            };
            let Some(pos) = func.attrs.iter().position(|a| a.path().is_ident("dtask")) else {
                continue;
            };
            let attr = func.attrs.remove(pos);
            let args: crate::Args = match &attr.meta {
                syn::Meta::List(l) => syn::parse2(l.tokens.clone()).expect("options parse"),
                _ => crate::Args::default(),
            };
            match crate::expand(args, func) {
                Ok(ts) => out.extend(ts),
                Err(e) => out.extend(e.to_compile_error()),
            }
        }
        let parsed = syn3::parse_file(&out.to_string()).expect("the expansion parses");
        prettyplease::unparse(&parsed)
    }

    #[test]
    fn expansions_match_the_golden_files() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden");
        let update = std::env::var_os("UPDATE_GOLDEN").is_some();
        let mut checked = 0;
        let mut entries: Vec<_> = std::fs::read_dir(&dir)
            .expect("tests/golden exists")
            .map(|e| e.expect("a directory entry").path())
            .collect();
        entries.sort();
        for path in entries {
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default();
            if !name.ends_with(".rs") || name.ends_with(".expanded.rs") {
                continue;
            }
            let src = std::fs::read_to_string(&path).expect("readable");
            let got = expand_file(&src);
            let golden = path.with_extension("expanded.rs");
            if update {
                std::fs::write(&golden, &got).expect("writable");
            } else {
                let want = std::fs::read_to_string(&golden).unwrap_or_default();
                assert!(
                    got == want,
                    "the expansion of {name} differs from {}; run with UPDATE_GOLDEN=1 and \
                     review the diff\n{got}",
                    golden.display()
                );
            }
            checked += 1;
        }
        assert!(checked >= 3, "only {checked} golden files");
    }
}
