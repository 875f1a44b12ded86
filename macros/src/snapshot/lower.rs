//! Lowering a body into [`ir`](super::ir): find the awaits, check that each one is in a
//! place the snapshot model supports, and turn each into a point.

use proc_macro2::Span;
use syn::spanned::Spanned;
use syn::visit::Visit;
use syn::visit_mut::VisitMut;
use syn::{Error, Expr, Ident, Label, Lifetime, Pat, Type};

use super::ir::{Arm, Bind, Block, Cond, Point, Stmt, Target};

pub(crate) struct Lowerer {
    next_bind: usize,
    next_point: u32,
    next_temp: usize,
    pub(crate) binds: Vec<Bind>,
}

type Res<T> = syn::Result<T>;

fn err<T>(span: Span, msg: &str) -> Res<T> {
    Err(Error::new(span, msg))
}

const MID_EXPR: &str =
    "this `.await` is in the middle of an expression, which a #[dtask(snapshot)] \
     function does not support (what is computed before it would be held across the await): \
     bind it first, `let v = ....await;`, and use `v`. An await may be the whole right-hand \
     side of a `let` or an assignment, an expression statement, the tail, a `return` or \
     `break` value, the scrutinee of a `match` or the condition of an `if`, optionally \
     followed by `?`, `.field` or `.method(..)`";

impl Lowerer {
    pub(crate) fn new() -> Self {
        Self {
            next_bind: 0,
            next_point: 0,
            next_temp: 0,
            binds: Vec::new(),
        }
    }

    fn bind(&mut self, ident: Ident, mutable: bool, by_ref: bool) -> Bind {
        let b = Bind {
            id: self.next_bind,
            ident,
            mutable,
            by_ref,
            deferred: false,
            generated: false,
            borrow_init: false,
        };
        self.next_bind += 1;
        self.binds.push(b.clone());
        b
    }

    fn temp(&mut self, prefix: &str, span: Span) -> Bind {
        let ident = Ident::new(&format!("__dt_{prefix}{}", self.next_temp), span);
        self.next_temp += 1;
        let mut b = self.bind(ident, true, false);
        b.generated = true;
        self.binds[b.id].generated = true;
        b
    }

    /// The bindings `pat` declares, registered as locals.
    pub(crate) fn pat_binds(&mut self, pat: &Pat) -> Vec<Bind> {
        let mut found = Vec::new();
        collect_pat(pat, &mut found);
        found
            .into_iter()
            .map(|(ident, mutable, by_ref)| self.bind(ident, mutable, by_ref))
            .collect()
    }

    fn mark(&mut self, binds: &mut [Bind], deferred: bool, borrow_init: bool) {
        for b in binds {
            b.deferred = deferred;
            b.borrow_init = borrow_init;
            self.binds[b.id].deferred = deferred;
            self.binds[b.id].borrow_init = borrow_init;
        }
    }

    fn point(&mut self, target: Target, expr: Expr, span: Span) -> Stmt {
        let index = self.next_point;
        self.next_point += 1;
        let rebuild = builds_retry(&expr);
        Stmt::Point(Point {
            index,
            target,
            expr,
            span,
            rebuild,
        })
    }

    pub(crate) fn block(&mut self, b: &syn::Block) -> Res<Block> {
        let mut stmts = Vec::new();
        let mut tail = None;
        let n = b.stmts.len();
        for (i, s) in b.stmts.iter().enumerate() {
            match s {
                syn::Stmt::Expr(e, None) if i + 1 == n => {
                    tail = self.tail(e, &mut stmts)?;
                }
                _ => self.stmt(s, &mut stmts)?,
            }
        }
        Ok(Block { stmts, tail })
    }

    fn stmt(&mut self, s: &syn::Stmt, out: &mut Vec<Stmt>) -> Res<()> {
        match s {
            syn::Stmt::Local(l) => self.local(l, out),
            syn::Stmt::Item(_) | syn::Stmt::Macro(_) => {
                out.push(Stmt::Plain {
                    stmt: s.clone(),
                    binds: Vec::new(),
                });
                Ok(())
            }
            syn::Stmt::Expr(e, semi) => {
                if !has_await(e) {
                    out.push(Stmt::Plain {
                        stmt: s.clone(),
                        binds: Vec::new(),
                    });
                    return Ok(());
                }
                let _ = semi;
                self.expr_stmt(e, out)
            }
        }
    }

    fn local(&mut self, l: &syn::Local, out: &mut Vec<Stmt>) -> Res<()> {
        let (pat, ty) = split_type(&l.pat);
        let Some(init) = &l.init else {
            let mut binds = self.pat_binds(&l.pat);
            self.mark(&mut binds, true, false);
            out.push(Stmt::Plain {
                stmt: syn::Stmt::Local(l.clone()),
                binds,
            });
            return Ok(());
        };
        if let Some((_, div)) = &init.diverge {
            if has_await(div) {
                return err(
                    first_await(div).unwrap_or(div.span()),
                    "`.await` in the `else` block of a `let ... else` is not supported in a \
                     #[dtask(snapshot)] function: use a `match` instead",
                );
            }
        }
        let expr = &*init.expr;
        if !has_await(expr) {
            let mut binds = self.pat_binds(&l.pat);
            let borrow = matches!(strip(expr), Expr::Reference(_)) || borrowing_call(expr);
            self.mark(&mut binds, false, borrow);
            out.push(Stmt::Plain {
                stmt: syn::Stmt::Local(l.clone()),
                binds,
            });
            return Ok(());
        }
        if is_control(expr) && init.diverge.is_none() {
            // `let PAT = <control flow with awaits>;` → `let v; <control flow setting v>;
            // let PAT = v;`
            let v = self.temp("v", expr.span());
            let mut vb = v.clone();
            vb.deferred = true;
            self.binds[v.id].deferred = true;
            out.push(Stmt::Deferred {
                bind: vb,
                ty: ty.clone(),
            });
            self.control(expr, Some(&v.ident), out)?;
            let vi = &v.ident;
            let binds = self.pat_binds(&l.pat);
            let attrs = &l.attrs;
            let lpat = &l.pat;
            out.push(Stmt::Plain {
                stmt: syn::parse_quote_spanned!(l.span()=> #(#attrs)* let #lpat = #vi;),
                binds,
            });
            return Ok(());
        }
        let rebuilt = self.heads(expr.clone(), out)?;
        if init.diverge.is_none() && l.attrs.is_empty() {
            if let Some(Stmt::Point(p)) = self.take_direct(&rebuilt, out) {
                let binds = self.pat_binds(&l.pat);
                out.push(Stmt::Point(Point {
                    target: Target::Let {
                        pat: pat.clone(),
                        ty,
                        binds,
                    },
                    ..p
                }));
                return Ok(());
            }
        }
        let mut local = l.clone();
        if let Some(init) = &mut local.init {
            *init.expr = rebuilt;
        }
        let binds = self.pat_binds(&l.pat);
        out.push(Stmt::Plain {
            stmt: syn::Stmt::Local(local),
            binds,
        });
        Ok(())
    }

    /// When `rebuilt` is just the temporary of the last point, takes that point back so
    /// that its result can go straight to the caller's target.
    fn take_direct(&mut self, rebuilt: &Expr, out: &mut Vec<Stmt>) -> Option<Stmt> {
        let Expr::Path(p) = rebuilt else {
            return None;
        };
        let Some(Stmt::Point(last)) = out.last() else {
            return None;
        };
        let Target::Let { binds, .. } = &last.target else {
            return None;
        };
        let is_it = binds.len() == 1 && binds[0].generated && p.path.is_ident(&binds[0].ident);
        if is_it {
            out.pop()
        } else {
            None
        }
    }

    fn expr_stmt(&mut self, e: &Expr, out: &mut Vec<Stmt>) -> Res<()> {
        let e = strip(e);
        match e {
            Expr::Assign(a) => {
                if has_await(&a.left) {
                    return err(first_await(&a.left).unwrap_or(a.span()), MID_EXPR);
                }
                let left = &a.left;
                if is_control(&a.right) {
                    let v = self.temp("v", a.right.span());
                    self.binds[v.id].deferred = true;
                    let mut vb = v.clone();
                    vb.deferred = true;
                    out.push(Stmt::Deferred { bind: vb, ty: None });
                    self.control(&a.right, Some(&v.ident), out)?;
                    let vi = &v.ident;
                    out.push(plain(syn::parse_quote_spanned!(a.span()=> #left = #vi;)));
                    return Ok(());
                }
                let rebuilt = self.heads((*a.right).clone(), out)?;
                if let Some(Stmt::Point(p)) = self.take_direct(&rebuilt, out) {
                    out.push(Stmt::Point(Point {
                        target: Target::Assign((**left).clone()),
                        ..p
                    }));
                    return Ok(());
                }
                out.push(plain(
                    syn::parse_quote_spanned!(a.span()=> #left = #rebuilt;),
                ));
                Ok(())
            }
            Expr::Binary(b) if is_compound_assign(&b.op) => {
                if has_await(&b.left) {
                    return err(first_await(&b.left).unwrap_or(b.span()), MID_EXPR);
                }
                if !is_simple_place(&b.left) {
                    return err(
                        b.left.span(),
                        "a compound assignment whose right-hand side awaits must assign a \
                         local or a field of one in a #[dtask(snapshot)] function; bind the \
                         await first: `let v = ....await;`",
                    );
                }
                let rebuilt = self.value((*b.right).clone(), out)?;
                let (left, op) = (&b.left, &b.op);
                out.push(plain(
                    syn::parse_quote_spanned!(b.span()=> #left #op #rebuilt;),
                ));
                Ok(())
            }
            Expr::Return(r) => {
                let Some(v) = &r.expr else {
                    out.push(plain(syn::parse_quote!(#r;)));
                    return Ok(());
                };
                let rebuilt = self.value((**v).clone(), out)?;
                out.push(plain(
                    syn::parse_quote_spanned!(r.span()=> return #rebuilt;),
                ));
                Ok(())
            }
            Expr::Break(b) => {
                let Some(v) = &b.expr else {
                    out.push(plain(syn::parse_quote!(#b;)));
                    return Ok(());
                };
                let rebuilt = self.value((**v).clone(), out)?;
                let label = &b.label;
                out.push(plain(
                    syn::parse_quote_spanned!(b.span()=> break #label #rebuilt;),
                ));
                Ok(())
            }
            e if is_control(e) => self.control(e, None, out),
            e => {
                let rebuilt = self.heads(e.clone(), out)?;
                if let Some(Stmt::Point(p)) = self.take_direct(&rebuilt, out) {
                    out.push(Stmt::Point(Point {
                        target: Target::Discard,
                        ..p
                    }));
                    return Ok(());
                }
                out.push(plain(syn::parse_quote_spanned!(e.span()=> #rebuilt;)));
                Ok(())
            }
        }
    }

    /// Lowers an expression whose value is used (a tail, a `return` value...): returns the
    /// await-free expression to use.
    fn value(&mut self, e: Expr, out: &mut Vec<Stmt>) -> Res<Expr> {
        if !has_await(&e) {
            return Ok(e);
        }
        if is_control(&e) {
            let v = self.temp("v", e.span());
            self.binds[v.id].deferred = true;
            let mut vb = v.clone();
            vb.deferred = true;
            out.push(Stmt::Deferred { bind: vb, ty: None });
            self.control(&e, Some(&v.ident), out)?;
            let vi = &v.ident;
            return Ok(syn::parse_quote!(#vi));
        }
        self.heads(e, out)
    }

    fn tail(&mut self, e: &Expr, out: &mut Vec<Stmt>) -> Res<Option<Expr>> {
        if !has_await(e) {
            return Ok(Some(e.clone()));
        }
        if let Expr::Loop(l) = strip(e) {
            if !breaks_to(&l.label, &l.body) {
                // A loop left only by `return`: it diverges, nothing to carry out of it.
                self.control(e, None, out)?;
                return Ok(None);
            }
        }
        if matches!(strip(e), Expr::Return(_) | Expr::Break(_) | Expr::Assign(_))
            || (is_control(e) && !has_value(e))
        {
            // No value: a statement (its type is `()`, or it diverges).
            self.expr_stmt(e, out)?;
            return Ok(None);
        }
        Ok(Some(self.value(e.clone(), out)?))
    }

    /// Turns the awaits in head position of `e` into points, innermost first, and returns
    /// `e` with each replaced by its temporary.
    fn heads(&mut self, mut e: Expr, out: &mut Vec<Stmt>) -> Res<Expr> {
        while let Some(slot) = head_await(&mut e) {
            let Expr::Await(aw) = std::mem::replace(slot, Expr::Verbatim(Default::default()))
            else {
                unreachable!("head_await finds awaits")
            };
            let span = aw.await_token.span;
            let inner = self.heads(*aw.base, out)?;
            let t = self.temp("t", span);
            let ti = t.ident.clone();
            let pat: Pat = syn::parse_quote_spanned!(span=> #ti);
            out.push(self.point(
                Target::Let {
                    pat,
                    ty: None,
                    binds: vec![t],
                },
                inner,
                span,
            ));
            *slot = syn::parse_quote_spanned!(span=> #ti);
        }
        if let Some(span) = first_await(&e) {
            return err(span, MID_EXPR);
        }
        Ok(e)
    }

    /// Lowers control flow (if, match, loop, while, for, block) that contains awaits; with
    /// `dest`, its value is assigned to `dest`.
    fn control(&mut self, e: &Expr, dest: Option<&Ident>, out: &mut Vec<Stmt>) -> Res<()> {
        match strip(e) {
            Expr::If(i) => {
                let cond = self.cond(&i.cond, out)?;
                let then = self.block_into(&i.then_branch, dest)?;
                let els = match &i.else_branch {
                    None => None,
                    Some((_, e)) => Some(match strip(e) {
                        Expr::Block(b) if b.label.is_none() => self.block_into(&b.block, dest)?,
                        other => {
                            let mut stmts = Vec::new();
                            self.control(other, dest, &mut stmts)?;
                            Block { stmts, tail: None }
                        }
                    }),
                };
                out.push(Stmt::If { cond, then, els });
                Ok(())
            }
            Expr::Match(m) => {
                let scrut = self.heads((*m.expr).clone(), out)?;
                let mut arms = Vec::new();
                for a in &m.arms {
                    if let Some((_, g)) = &a.guard {
                        if let Some(span) = first_await(g) {
                            return err(
                                span,
                                "`.await` in a match guard is not supported in a \
                                 #[dtask(snapshot)] function: await before the `match` \
                                 (`let v = ....await;`) and test `v` in the guard",
                            );
                        }
                    }
                    let binds = self.pat_binds(&a.pat);
                    let body = match strip(&a.body) {
                        Expr::Block(b) if b.label.is_none() && b.attrs.is_empty() => {
                            self.block_into(&b.block, dest)?
                        }
                        other => {
                            let mut stmts = Vec::new();
                            let tail = self.tail(other, &mut stmts)?;
                            finish_into(Block { stmts, tail }, dest)
                        }
                    };
                    arms.push(Arm {
                        attrs: a.attrs.clone(),
                        pat: a.pat.clone(),
                        guard: a.guard.as_ref().map(|(_, g)| (**g).clone()),
                        body,
                        binds,
                    });
                }
                out.push(Stmt::Match { scrut, arms });
                Ok(())
            }
            Expr::Loop(l) => {
                let mut body = l.body.clone();
                if let Some(d) = dest {
                    rewrite_breaks(&mut body, l.label.as_ref(), true, d);
                }
                let body = self.block(&body)?;
                out.push(Stmt::Loop {
                    label: l.label.clone(),
                    body,
                });
                Ok(())
            }
            Expr::While(w) => {
                if let Some(span) = first_await(&w.cond) {
                    return err(
                        span,
                        "`.await` in a loop condition is not supported in a \
                         #[dtask(snapshot)] function: write `loop { let c = ....await; if \
                         !c { break; } ... }`",
                    );
                }
                let cond = self.cond(&w.cond, out)?;
                let body = self.block(&w.body)?;
                out.push(Stmt::While {
                    label: w.label.clone(),
                    cond,
                    body,
                });
                unit_into(dest, out);
                Ok(())
            }
            Expr::ForLoop(f) => {
                let iter = self.heads((*f.expr).clone(), out)?;
                if !has_await(&f.body) {
                    let (attrs, label, pat, body) = (&f.attrs, &f.label, &f.pat, &f.body);
                    out.push(plain(syn::parse_quote_spanned!(f.span()=>
                        #(#attrs)* #label for #pat in #iter #body
                    )));
                    unit_into(dest, out);
                    return Ok(());
                }
                // `for PAT in ITER BODY` → a saved iterator and a `while let`.
                let it = self.temp("it", f.expr.span());
                let iti = &it.ident;
                let start: syn::Stmt = syn::parse_quote_spanned!(f.expr.span()=>
                    let mut #iti = __dt::for_iter(#iter);
                );
                out.push(Stmt::Plain {
                    stmt: start,
                    binds: vec![it.clone()],
                });
                let pat = &f.pat;
                let binds = self.pat_binds(pat);
                let cond = Cond::Let {
                    pat: syn::parse_quote_spanned!(pat.span()=> ::core::option::Option::Some(#pat)),
                    expr: syn::parse_quote_spanned!(f.expr.span()=>
                        ::core::iter::Iterator::next(&mut #iti)
                    ),
                    binds,
                };
                let body = self.block(&f.body)?;
                out.push(Stmt::While {
                    label: f.label.clone(),
                    cond,
                    body,
                });
                unit_into(dest, out);
                Ok(())
            }
            Expr::Block(b) => {
                let mut block = b.block.clone();
                if let (Some(d), Some(l)) = (dest, &b.label) {
                    rewrite_breaks(&mut block, Some(l), false, d);
                }
                let body = self.block_into(&block, dest)?;
                out.push(Stmt::Block {
                    label: b.label.clone(),
                    body,
                });
                Ok(())
            }
            Expr::Unsafe(u) => err(
                u.unsafe_token.span,
                "`.await` inside an `unsafe` block is not supported in a #[dtask(snapshot)] \
                 function: await outside of it",
            ),
            other => err(other.span(), MID_EXPR),
        }
    }

    fn cond(&mut self, c: &Expr, out: &mut Vec<Stmt>) -> Res<Cond> {
        match strip(c) {
            Expr::Let(l) => {
                let expr = self.heads((*l.expr).clone(), out)?;
                let binds = self.pat_binds(&l.pat);
                Ok(Cond::Let {
                    pat: (*l.pat).clone(),
                    expr,
                    binds,
                })
            }
            other => Ok(Cond::Expr(self.heads(other.clone(), out)?)),
        }
    }

    /// Lowers a block whose value goes to `dest` (when given).
    fn block_into(&mut self, b: &syn::Block, dest: Option<&Ident>) -> Res<Block> {
        let block = self.block(b)?;
        Ok(finish_into(block, dest))
    }
}

fn finish_into(mut block: Block, dest: Option<&Ident>) -> Block {
    if let Some(d) = dest {
        if let Some(t) = block.tail.take() {
            block
                .stmts
                .push(plain(syn::parse_quote_spanned!(t.span()=> #d = #t;)));
        }
    }
    block
}

fn unit_into(dest: Option<&Ident>, out: &mut Vec<Stmt>) {
    if let Some(d) = dest {
        out.push(plain(syn::parse_quote!(#d = ();)));
    }
}

fn plain(stmt: syn::Stmt) -> Stmt {
    Stmt::Plain {
        stmt,
        binds: Vec::new(),
    }
}

fn split_type(p: &Pat) -> (Pat, Option<Type>) {
    match p {
        Pat::Type(t) => ((*t.pat).clone(), Some((*t.ty).clone())),
        other => (other.clone(), None),
    }
}

fn strip(e: &Expr) -> &Expr {
    match e {
        Expr::Paren(p) => strip(&p.expr),
        Expr::Group(g) => strip(&g.expr),
        other => other,
    }
}

fn is_control(e: &Expr) -> bool {
    matches!(
        strip(e),
        Expr::If(_)
            | Expr::Match(_)
            | Expr::Loop(_)
            | Expr::While(_)
            | Expr::ForLoop(_)
            | Expr::Block(_)
            | Expr::Unsafe(_)
    )
}

/// Whether control flow can produce a value other than `()`: some branch ends with an
/// expression (or a loop has a `break` to it).
fn has_value(e: &Expr) -> bool {
    fn block(b: &syn::Block) -> bool {
        match b.stmts.last() {
            Some(syn::Stmt::Expr(e, None)) => !is_control(e) || has_value(e),
            _ => false,
        }
    }
    match strip(e) {
        Expr::If(i) => {
            block(&i.then_branch) || i.else_branch.as_ref().is_some_and(|(_, e)| has_value(e))
        }
        Expr::Match(m) => m.arms.iter().any(|a| match strip(&a.body) {
            Expr::Block(b) if b.label.is_none() => block(&b.block),
            other => !is_control(other) || has_value(other),
        }),
        Expr::Block(b) => block(&b.block) || b.label.is_some(),
        Expr::Unsafe(u) => block(&u.block),
        Expr::Loop(l) => breaks_to(&l.label, &l.body),
        Expr::While(_) | Expr::ForLoop(_) => false,
        _ => true,
    }
}

fn is_compound_assign(op: &syn::BinOp) -> bool {
    use syn::BinOp::*;
    matches!(
        op,
        AddAssign(_)
            | SubAssign(_)
            | MulAssign(_)
            | DivAssign(_)
            | RemAssign(_)
            | BitXorAssign(_)
            | BitAndAssign(_)
            | BitOrAssign(_)
            | ShlAssign(_)
            | ShrAssign(_)
    )
}

fn is_simple_place(e: &Expr) -> bool {
    match strip(e) {
        Expr::Path(p) => p.qself.is_none(),
        Expr::Field(f) => is_simple_place(&f.base),
        _ => false,
    }
}

/// Methods of the standard library that return a borrow of their receiver.
fn borrowing_call(e: &Expr) -> bool {
    const BORROWING: &[&str] = &[
        "iter",
        "iter_mut",
        "as_str",
        "as_slice",
        "as_mut_slice",
        "as_bytes",
        "chars",
        "bytes",
        "lines",
        "keys",
        "values",
        "values_mut",
        "split_whitespace",
        "borrow",
        "borrow_mut",
        "lock",
    ];
    match strip(e) {
        Expr::MethodCall(m) => BORROWING.iter().any(|b| m.method == b),
        _ => false,
    }
}

/// Whether `e` is pure enough to be evaluated after an await that follows it (a literal
/// or a temporary of the lowering).
fn pure(e: &Expr) -> bool {
    match strip(e) {
        Expr::Lit(_) => true,
        Expr::Path(p) => p
            .path
            .get_ident()
            .is_some_and(|i| i.to_string().starts_with("__dt_t")),
        _ => false,
    }
}

/// Whether `e` reads a local (a plain path) that `rest` never mentions: reading it before
/// or after the awaits in `rest` is the same.
fn untouched_local(e: &Expr, rest: &[&Expr]) -> bool {
    let Expr::Path(p) = strip(e) else {
        return false;
    };
    let Some(name) = p.path.get_ident() else {
        return false;
    };
    fn mentions(ts: proc_macro2::TokenStream, name: &Ident) -> bool {
        ts.into_iter().any(|tt| match tt {
            proc_macro2::TokenTree::Ident(i) => &i == name,
            proc_macro2::TokenTree::Group(g) => mentions(g.stream(), name),
            _ => false,
        })
    }
    !rest
        .iter()
        .any(|r| mentions(quote::ToTokens::to_token_stream(*r), name))
}

/// The outermost await in head position: the first thing `e` evaluates that has effects.
fn head_await(e: &mut Expr) -> Option<&mut Expr> {
    fn seq(items: Vec<&mut Expr>) -> Option<&mut Expr> {
        let n = items.len();
        let mut skip = 0;
        while skip < n {
            let item = &*items[skip];
            let rest: Vec<&Expr> = items[skip + 1..].iter().map(|e| &**e).collect();
            if pure(item) || untouched_local(item, &rest) {
                skip += 1;
            } else {
                break;
            }
        }
        items.into_iter().nth(skip).and_then(head_await)
    }
    if matches!(e, Expr::Await(_)) {
        return Some(e);
    }
    match e {
        Expr::Paren(p) => head_await(&mut p.expr),
        Expr::Group(g) => head_await(&mut g.expr),
        Expr::MethodCall(m) => seq(std::iter::once(&mut *m.receiver)
            .chain(m.args.iter_mut())
            .collect()),
        Expr::Field(f) => head_await(&mut f.base),
        Expr::Try(t) => head_await(&mut t.expr),
        Expr::Cast(c) => head_await(&mut c.expr),
        Expr::Unary(u) => head_await(&mut u.expr),
        Expr::Index(i) => seq(vec![&mut *i.expr, &mut *i.index]),
        Expr::Binary(b) => {
            use syn::BinOp::*;
            if matches!(b.op, And(_) | Or(_)) {
                head_await(&mut b.left)
            } else {
                seq(vec![&mut *b.left, &mut *b.right])
            }
        }
        Expr::Call(c) if matches!(strip(&c.func), Expr::Path(_)) => {
            seq(c.args.iter_mut().collect())
        }
        Expr::Tuple(t) => seq(t.elems.iter_mut().collect()),
        Expr::Array(a) => seq(a.elems.iter_mut().collect()),
        Expr::Struct(s) if s.rest.is_none() => {
            seq(s.fields.iter_mut().map(|f| &mut f.expr).collect())
        }
        _ => None,
    }
}

/// Finds awaits that belong to the function's body (not to nested items).
pub(crate) struct AwaitFinder {
    found: Option<Span>,
}

impl<'ast> Visit<'ast> for AwaitFinder {
    fn visit_expr_await(&mut self, a: &'ast syn::ExprAwait) {
        self.found.get_or_insert(a.await_token.span);
    }
    fn visit_item(&mut self, _: &'ast syn::Item) {}
}

pub(crate) fn has_await<T: AwaitSearch + ?Sized>(node: &T) -> bool {
    first_await(node).is_some()
}

pub(crate) fn first_await<T: AwaitSearch + ?Sized>(node: &T) -> Option<Span> {
    let mut f = AwaitFinder { found: None };
    node.search(&mut f);
    f.found
}

pub(crate) trait AwaitSearch {
    fn search(&self, f: &mut AwaitFinder);
}

impl AwaitSearch for Expr {
    fn search(&self, f: &mut AwaitFinder) {
        f.visit_expr(self);
    }
}

impl<T: AwaitSearch> AwaitSearch for Box<T> {
    fn search(&self, f: &mut AwaitFinder) {
        (**self).search(f);
    }
}

impl AwaitSearch for syn::Block {
    fn search(&self, f: &mut AwaitFinder) {
        f.visit_block(self);
    }
}

/// Checks the places where an await is never supported, before lowering.
pub(crate) struct Forbidden {
    pub(crate) errors: Vec<Error>,
}

impl Forbidden {
    fn inside(&mut self, node: &dyn Fn(&mut AwaitFinder), msg: &str) {
        let mut f = AwaitFinder { found: None };
        node(&mut f);
        if let Some(span) = f.found {
            self.errors.push(Error::new(span, msg));
        }
    }
}

const IN_CLOSURE: &str = "`.await` inside a closure cannot be saved by a #[dtask(snapshot)] \
     function: only the awaits of the function's own body are suspension points. Await in \
     the body, or move this code into an `async fn` and await or call that (e.g. \
     `DTask::run(|| my_async_fn(args))` for a local side effect), or into a child #[dtask]";

const IN_ASYNC: &str = "`.await` inside an `async` block cannot be saved by a #[dtask(snapshot)] \
     function: only the awaits of the function's own body are suspension points. Await in \
     the body directly, or move the block into an `async fn` (awaiting it then runs it as \
     local work) or into a child #[dtask]";

const IN_MACRO: &str = "`.await` inside a macro call is not supported in a #[dtask(snapshot)] \
     function: bind it first (`let v = ....await;`) and pass `v` to the macro";

impl<'ast> Visit<'ast> for Forbidden {
    fn visit_expr_closure(&mut self, c: &'ast syn::ExprClosure) {
        self.inside(&|f| f.visit_expr(&c.body), IN_CLOSURE);
    }
    fn visit_expr_async(&mut self, a: &'ast syn::ExprAsync) {
        self.inside(&|f| f.visit_block(&a.block), IN_ASYNC);
    }
    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        if let Some(span) = await_in_tokens(m.tokens.clone()) {
            self.errors.push(Error::new(span, IN_MACRO));
        }
    }
    fn visit_item(&mut self, _: &'ast syn::Item) {}
}

fn await_in_tokens(ts: proc_macro2::TokenStream) -> Option<Span> {
    let mut prev_dot = false;
    for tt in ts {
        match tt {
            proc_macro2::TokenTree::Ident(i) if prev_dot && i == "await" => {
                return Some(i.span());
            }
            proc_macro2::TokenTree::Group(g) => {
                if let Some(s) = await_in_tokens(g.stream()) {
                    return Some(s);
                }
                prev_dot = false;
            }
            proc_macro2::TokenTree::Punct(p) => prev_dot = p.as_char() == '.',
            _ => prev_dot = false,
        }
    }
    None
}

/// Whether `body` has a `break` that leaves the loop labelled `label` (or the innermost
/// loop, for unlabelled breaks outside nested loops).
fn breaks_to(label: &Option<Label>, body: &syn::Block) -> bool {
    struct Finder<'a> {
        label: Option<&'a Lifetime>,
        depth: usize,
        found: bool,
    }
    impl<'ast> Visit<'ast> for Finder<'_> {
        fn visit_expr_break(&mut self, b: &'ast syn::ExprBreak) {
            match (&b.label, self.label) {
                (None, _) if self.depth == 0 => self.found = true,
                (Some(l), Some(mine)) if l.ident == mine.ident => self.found = true,
                _ => {}
            }
            syn::visit::visit_expr_break(self, b);
        }
        fn visit_expr_loop(&mut self, l: &'ast syn::ExprLoop) {
            self.depth += 1;
            syn::visit::visit_expr_loop(self, l);
            self.depth -= 1;
        }
        fn visit_expr_while(&mut self, l: &'ast syn::ExprWhile) {
            self.depth += 1;
            syn::visit::visit_expr_while(self, l);
            self.depth -= 1;
        }
        fn visit_expr_for_loop(&mut self, l: &'ast syn::ExprForLoop) {
            self.depth += 1;
            syn::visit::visit_expr_for_loop(self, l);
            self.depth -= 1;
        }
        fn visit_expr_closure(&mut self, _: &'ast syn::ExprClosure) {}
        fn visit_expr_async(&mut self, _: &'ast syn::ExprAsync) {}
        fn visit_item(&mut self, _: &'ast syn::Item) {}
    }
    let mut f = Finder {
        label: label.as_ref().map(|l| &l.name),
        depth: 0,
        found: false,
    };
    f.visit_block(body);
    f.found
}

/// Rewrites `break 'label value` (and unlabelled `break value` when `unlabelled` and not
/// nested in another loop) into `{ dest = value; break 'label; }`.
fn rewrite_breaks(body: &mut syn::Block, label: Option<&Label>, unlabelled: bool, dest: &Ident) {
    struct Rewriter<'a> {
        label: Option<&'a Lifetime>,
        unlabelled: bool,
        depth: usize,
        dest: &'a Ident,
    }
    impl VisitMut for Rewriter<'_> {
        fn visit_expr_mut(&mut self, e: &mut Expr) {
            match e {
                Expr::Loop(_) | Expr::While(_) | Expr::ForLoop(_) => {
                    self.depth += 1;
                    syn::visit_mut::visit_expr_mut(self, e);
                    self.depth -= 1;
                    return;
                }
                Expr::Closure(_) | Expr::Async(_) => return,
                _ => {}
            }
            syn::visit_mut::visit_expr_mut(self, e);
            if let Expr::Break(b) = e {
                let mine = match (&b.label, self.label) {
                    (None, _) => self.unlabelled && self.depth == 0,
                    (Some(l), Some(m)) => l.ident == m.ident,
                    _ => false,
                };
                if mine {
                    if let Some(v) = b.expr.take() {
                        let d = self.dest;
                        let label = &b.label;
                        *e = syn::parse_quote_spanned!(v.span()=> { #d = #v; break #label; });
                    }
                }
            }
        }
        fn visit_item_mut(&mut self, _: &mut syn::Item) {}
    }
    let mut r = Rewriter {
        label: label.map(|l| &l.name),
        unlabelled,
        depth: 0,
        dest,
    };
    r.visit_block_mut(body);
}

/// The bindings of a pattern: (name, mutable, by reference). Identifiers that start with
/// an upper-case letter are constants or unit variants, not bindings.
pub(crate) fn collect_pat(pat: &Pat, out: &mut Vec<(Ident, bool, bool)>) {
    match pat {
        Pat::Ident(p) => {
            let name = p.ident.to_string();
            let binding = !name.starts_with(|c: char| c.is_uppercase())
                || p.mutability.is_some()
                || p.by_ref.is_some()
                || p.subpat.is_some();
            if binding {
                out.push((p.ident.clone(), p.mutability.is_some(), p.by_ref.is_some()));
            }
            if let Some((_, sub)) = &p.subpat {
                collect_pat(sub, out);
            }
        }
        Pat::Or(o) => {
            if let Some(first) = o.cases.first() {
                collect_pat(first, out);
            }
        }
        Pat::Paren(p) => collect_pat(&p.pat, out),
        Pat::Reference(r) => collect_pat(&r.pat, out),
        Pat::Slice(s) => s.elems.iter().for_each(|p| collect_pat(p, out)),
        Pat::Struct(s) => s.fields.iter().for_each(|f| collect_pat(&f.pat, out)),
        Pat::Tuple(t) => t.elems.iter().for_each(|p| collect_pat(p, out)),
        Pat::TupleStruct(t) => t.elems.iter().for_each(|p| collect_pat(p, out)),
        Pat::Type(t) => collect_pat(&t.pat, out),
        _ => {}
    }
}

/// Whether an awaited expression builds a retry: it calls `run_with_retry` /
/// `run_with_retry_if` or a method `.retry(..)` (syntax only: the macro sees no types).
pub(crate) fn builds_retry(e: &Expr) -> bool {
    struct Find(bool);
    impl<'ast> Visit<'ast> for Find {
        fn visit_expr_method_call(&mut self, m: &'ast syn::ExprMethodCall) {
            if m.method == "retry" {
                self.0 = true;
            }
            syn::visit::visit_expr_method_call(self, m);
        }
        fn visit_expr_path(&mut self, p: &'ast syn::ExprPath) {
            if let Some(last) = p.path.segments.last() {
                if last.ident == "run_with_retry" || last.ident == "run_with_retry_if" {
                    self.0 = true;
                }
            }
            syn::visit::visit_expr_path(self, p);
        }
    }
    let mut f = Find(false);
    f.visit_expr(e);
    f.0
}
