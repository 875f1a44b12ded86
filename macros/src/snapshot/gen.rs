//! Code generation: the body as one async block that starts at the top or resumes at any
//! await. The code after an await (its continuation) is written out once per await: the
//! rest of each enclosing block, with the enclosing loops entered at their first
//! (partial) iteration and continued in full. Saved locals are declared again at the
//! level where the original code declares them, so names resolve as in the original.

use std::collections::BTreeMap;

use proc_macro2::TokenStream;
use quote::{format_ident, quote, quote_spanned};
use syn::{Error, Ident};

use super::ir::{Bind, Block, Cond, Point, Stmt, Target};
use super::resolve::{level_binds, Needs, Step};

pub(crate) struct Gen<'a> {
    pub(crate) binds: &'a [Bind],
    /// Per await: what resuming there needs.
    pub(crate) needs: &'a [Needs],
    /// Field names of saved bindings (by id).
    pub(crate) fields: BTreeMap<usize, Ident>,
}

/// The variable a saved binding is restored from in a continuation.
fn restore_var(field: &Ident) -> Ident {
    format_ident!("__dt_s_{}", field)
}

pub(crate) fn ty_var(field: &Ident) -> Ident {
    format_ident!("__dt_ty_{}", field)
}

/// The codec of a saved local at one point.
pub(crate) fn codec_var(index: u32, field: &Ident) -> Ident {
    format_ident!("__dt_c{}_{}", index, field)
}

pub(crate) fn kind_var(index: u32) -> Ident {
    format_ident!("__dt_k{}", index)
}

impl Gen<'_> {
    /// Assigns each saved binding a unique field name.
    pub(crate) fn name_fields(binds: &[Bind], needs: &[Needs]) -> BTreeMap<usize, Ident> {
        let mut saved: Vec<usize> = needs.iter().flat_map(|n| n.saved.iter().copied()).collect();
        saved.sort_unstable();
        saved.dedup();
        let mut used: BTreeMap<String, usize> = BTreeMap::new();
        let mut fields = BTreeMap::new();
        for id in saved {
            let base = binds[id].ident.to_string();
            let base = base.strip_prefix("r#").unwrap_or(&base);
            let base = match base.trim_start_matches('_') {
                "" => "local".to_string(),
                b => b.to_string(),
            };
            let n = used.entry(base.clone()).or_insert(0);
            let name = if *n == 0 {
                base.clone()
            } else {
                format!("{base}_{n}")
            };
            *n += 1;
            fields.insert(id, Ident::new(&name, binds[id].ident.span()));
        }
        fields
    }

    // ---- the code that runs from the top ----

    pub(crate) fn block(&self, b: &Block, skip_items: bool) -> TokenStream {
        let stmts = b
            .stmts
            .iter()
            .filter(|s| !(skip_items && is_item(s)))
            .map(|s| self.stmt(s));
        let tail = &b.tail;
        quote! { #(#stmts)* #tail }
    }

    fn stmt(&self, s: &Stmt) -> TokenStream {
        match s {
            Stmt::Plain { stmt, .. } => quote! { #stmt },
            Stmt::Deferred { bind, ty } => {
                let i = &bind.ident;
                let ty = ty.as_ref().map(|t| quote! { : #t });
                quote! { let #i #ty; }
            }
            Stmt::Point(p) => self.point(p, false),
            Stmt::If { cond, then, els } => {
                let cond = cond_tokens(cond);
                let then = self.block(then, false);
                let els = els.as_ref().map(|e| {
                    let e = self.block(e, false);
                    quote! { else { #e } }
                });
                quote! { if #cond { #then } #els; }
            }
            Stmt::Match { scrut, arms } => {
                let arms = arms.iter().map(|a| {
                    let (attrs, pat, body) = (&a.attrs, &a.pat, self.block(&a.body, false));
                    let guard = a.guard.as_ref().map(|g| quote! { if #g });
                    quote! { #(#attrs)* #pat #guard => { #body } }
                });
                quote! { match #scrut { #(#arms)* }; }
            }
            Stmt::Loop { label, body } => {
                let body = self.block(body, false);
                quote! { #label loop { #body }; }
            }
            Stmt::While { label, cond, body } => {
                let cond = cond_tokens(cond);
                let body = self.block(body, false);
                quote! { #label while #cond { #body }; }
            }
            Stmt::Block { label, body } => {
                let body = self.block(body, false);
                quote! { #label { #body }; }
            }
        }
    }

    /// An await: poll; while pending, save the frame (the locals the code after it
    /// uses), then return `Pending`.
    fn point(&self, p: &Point, resumed: bool) -> TokenStream {
        let index = p.index;
        let k = kind_var(index);
        let line = quote_spanned! {p.span=> ::core::line!() };
        let saves = self.needs[index as usize].saved.iter().map(|id| {
            let b = &self.binds[*id];
            let (i, c) = (&b.ident, codec_var(index, &self.fields[id]));
            quote! { #c => #i }
        });
        let expr = &p.expr;
        let value = match (resumed, p.rebuild) {
            (true, false) => {
                quote! { __dt::resume_point!(#index, #k, __dt_pending, #line, [#(#saves),*]) }
            }
            (false, false) => quote! { __dt::point!(#index, #k, #expr, #line, [#(#saves),*]) },
            (true, true) => quote! {
                __dt::rebuild_resume_point!(#index, #k, __dt_pending, #expr, #line, [#(#saves),*])
            },
            (false, true) => {
                quote! { __dt::rebuild_point!(#index, #k, #expr, #line, [#(#saves),*]) }
            }
        };
        match &p.target {
            Target::Let { pat, ty, .. } => {
                let ty = ty.as_ref().map(|t| quote! { : #t });
                quote! { let #pat #ty = #value; }
            }
            Target::Assign(place) => quote! { #place = #value; },
            Target::Discard => quote! { #value; },
        }
    }

    // ---- the code that runs after an await ----

    /// The statements that resume at the await reached by `path` inside `b`; `construct`
    /// are the bindings of the enclosing pattern (match arm, `if let`, `while let`).
    /// Appends the restore variables it uses to `used`.
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn cont(
        &self,
        index: usize,
        b: &Block,
        path: &[(usize, Step)],
        construct: &[Bind],
        depth: usize,
        top: bool,
        used: &mut Vec<Ident>,
    ) -> TokenStream {
        let needs = &self.needs[index];
        let (m, step) = &path[0];
        let mut out = TokenStream::new();
        if !top {
            // Items are visible in their whole block.
            for s in &b.stmts {
                if is_item(s) {
                    out.extend(self.stmt(s));
                }
            }
        }
        let pre: Vec<(&Bind, Option<&Stmt>)> = construct
            .iter()
            .map(|b| (b, None))
            .chain(
                b.stmts[..*m]
                    .iter()
                    .flat_map(|s| level_binds(s).into_iter().map(move |b| (b, Some(s)))),
            )
            .collect();
        for (bind, stmt) in pre {
            if needs.saved.contains(&bind.id) {
                let field = &self.fields[&bind.id];
                let var = restore_var(field);
                let i = &bind.ident;
                let m = bind.mutable.then(|| quote! { mut });
                out.extend(quote! { let #m #i = #var; });
                used.push(var);
            } else if needs.redeclared.contains(&bind.id) {
                match stmt {
                    Some(Stmt::Deferred { bind, ty }) => {
                        let i = &bind.ident;
                        let ty = ty.as_ref().map(|t| quote! { : #t });
                        out.extend(quote! { let #i #ty; });
                    }
                    Some(Stmt::Plain { stmt, .. }) => out.extend(quote! { #stmt }),
                    _ => {}
                }
            }
        }
        let here = &b.stmts[*m];
        let resumed = match (here, step) {
            (Stmt::Point(p), Step::Here) => self.point(p, true),
            (Stmt::If { cond, then, els }, Step::Branch(k, sub)) => {
                let branch = if *k == 0 {
                    then
                } else {
                    els.as_ref().expect("paths follow the lowered code")
                };
                let cb: &[Bind] = match (cond, k) {
                    (Cond::Let { binds, .. }, 0) => binds,
                    _ => &[],
                };
                let inner = self.cont(index, branch, sub, cb, depth, false, used);
                quote! { { #inner } }
            }
            (Stmt::Match { arms, .. }, Step::Arm(k, sub)) => {
                let arm = &arms[*k];
                let inner = self.cont(index, &arm.body, sub, &arm.binds, depth, false, used);
                quote! { { #inner } }
            }
            (Stmt::Block { label, body }, Step::Body(sub)) => {
                let inner = self.cont(index, body, sub, &[], depth, false, used);
                quote! { #label { #inner }; }
            }
            (Stmt::Loop { label, body }, Step::Body(sub)) => {
                let mut deeper = Vec::new();
                let partial = self.cont(index, body, sub, &[], depth + 1, false, &mut deeper);
                let full = self.block(body, false);
                self.resume_loop(label, depth, &deeper, partial, full, used)
            }
            (Stmt::While { label, cond, body }, Step::Body(sub)) => {
                let cb: &[Bind] = match cond {
                    Cond::Let { binds, .. } => binds,
                    Cond::Expr(_) => &[],
                };
                let mut deeper = Vec::new();
                let partial = self.cont(index, body, sub, cb, depth + 1, false, &mut deeper);
                let body = self.block(body, false);
                let full = match cond {
                    Cond::Expr(e) => quote! { if !(#e) { break; } { #body } },
                    Cond::Let { pat, expr, .. } => {
                        quote! { let #pat = #expr else { break; }; #body }
                    }
                };
                self.resume_loop(label, depth, &deeper, partial, full, used)
            }
            _ => unreachable!("paths follow the lowered code"),
        };
        out.extend(resumed);
        for s in &b.stmts[m + 1..] {
            out.extend(self.stmt(s));
        }
        if let Some(t) = &b.tail {
            out.extend(quote! { #t });
        }
        out
    }

    /// A loop entered in the middle of an iteration: the first iteration runs `partial`
    /// (with the restored values it needs), the next ones run `full`.
    fn resume_loop(
        &self,
        label: &Option<syn::Label>,
        depth: usize,
        deeper: &[Ident],
        partial: TokenStream,
        full: TokenStream,
        used: &mut Vec<Ident>,
    ) -> TokenStream {
        let first = format_ident!("__dt_first{}", depth);
        used.extend(deeper.iter().cloned());
        quote! {
            let mut #first = ::core::option::Option::Some((#(#deeper,)*));
            #label loop {
                if let ::core::option::Option::Some((#(#deeper,)*)) = #first.take() {
                    #partial
                } else {
                    #full
                }
            };
        }
    }
}

fn cond_tokens(c: &Cond) -> TokenStream {
    match c {
        Cond::Expr(e) => quote! { #e },
        Cond::Let { pat, expr, .. } => quote! { let #pat = #expr },
    }
}

pub(crate) fn is_item(s: &Stmt) -> bool {
    matches!(
        s,
        Stmt::Plain {
            stmt: syn::Stmt::Item(_),
            ..
        }
    )
}

/// Checks the saved bindings of every await: no borrows, and each is the binding its
/// name refers to at the await (not shadowed there).
pub(crate) fn check_saved(binds: &[Bind], needs: &[Needs]) -> syn::Result<()> {
    let mut errors: Option<Error> = None;
    let mut push = |e: Error| match &mut errors {
        Some(all) => all.combine(e),
        None => errors = Some(e),
    };
    let mut seen = std::collections::BTreeSet::new();
    for n in needs {
        for id in &n.saved {
            let b = &binds[*id];
            let name = b.ident.to_string();
            if (b.by_ref || b.borrow_init) && seen.insert(*id) {
                push(Error::new(
                    b.ident.span(),
                    format!(
                        "`{name}` holds a borrow across an `.await`, which a #[dtask(snapshot)] \
                         function cannot save: the locals used after an await are saved by \
                         value. Hold an owned value (e.g. `.clone()`, `.to_string()`, \
                         `.to_vec()`), or borrow again after the await"
                    ),
                ));
            }
            if n.visible.get(&name) != Some(id) && seen.insert(usize::MAX - *id) {
                push(Error::new(
                    b.ident.span(),
                    format!(
                        "`{name}` is used after an `.await` where another local named \
                         `{name}` shadows it, which a #[dtask(snapshot)] function cannot save: \
                         rename one of them"
                    ),
                ));
            }
        }
    }
    match errors {
        Some(e) => Err(e),
        None => Ok(()),
    }
}
