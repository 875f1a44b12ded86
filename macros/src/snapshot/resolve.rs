//! Which locals each await saves: the bindings declared before the await that the code
//! able to run after it (its continuation) mentions. Name resolution is lexical, like
//! Rust's: a use refers to the innermost binding of that name declared before it.

use std::collections::BTreeSet;

use syn::visit::Visit;
use syn::{Expr, Ident};

use super::ir::{Bind, Block, Cond, Stmt, Target};

#[derive(Clone, Copy, PartialEq, Eq)]
enum Ref {
    /// Declared before the await: restored when resuming there.
    Restored(usize),
    /// Declared by code that runs after the await.
    Local,
}

/// What resuming at one await needs.
#[derive(Default, Debug)]
pub(crate) struct Needs {
    /// Bindings to save and restore (ids).
    pub(crate) saved: BTreeSet<usize>,
    /// Bindings declared without a value that the continuation assigns before any read:
    /// declared again, uninitialized.
    pub(crate) redeclared: BTreeSet<usize>,
    /// The binding each name refers to at the await.
    pub(crate) visible: std::collections::BTreeMap<String, usize>,
}

struct Scopes<'a> {
    stack: Vec<Vec<(String, Ref)>>,
    binds: &'a [Bind],
    needs: Needs,
}

fn name(i: &Ident) -> String {
    let s = i.to_string();
    s.strip_prefix("r#").map(str::to_string).unwrap_or(s)
}

impl Scopes<'_> {
    fn push(&mut self) {
        self.stack.push(Vec::new());
    }
    fn pop(&mut self) {
        self.stack.pop();
    }
    fn declare(&mut self, ident: &Ident, r: Ref) {
        if let Some(top) = self.stack.last_mut() {
            top.push((name(ident), r));
        }
    }
    fn declare_binds(&mut self, binds: &[Bind], restored: bool) {
        for b in binds {
            let r = if restored {
                Ref::Restored(b.id)
            } else {
                Ref::Local
            };
            self.declare(&b.ident, r);
        }
    }
    fn lookup(&self, n: &str) -> Option<Ref> {
        self.stack
            .iter()
            .rev()
            .flat_map(|s| s.iter().rev())
            .find(|(k, _)| k == n)
            .map(|(_, r)| *r)
    }
    fn use_name(&mut self, n: &str) {
        if let Some(Ref::Restored(id)) = self.lookup(n) {
            let b = &self.binds[id];
            if b.generated && b.deferred {
                self.needs.redeclared.insert(id);
            } else if !self.needs.redeclared.contains(&id) {
                self.needs.saved.insert(id);
            }
        }
    }

    // ---- syn code (await-free) ----

    fn syn_stmt(&mut self, s: &syn::Stmt) {
        match s {
            syn::Stmt::Local(l) => {
                if let Some(init) = &l.init {
                    self.expr(&init.expr);
                    if let Some((_, d)) = &init.diverge {
                        self.expr(d);
                    }
                }
                self.declare_pat(&l.pat);
            }
            syn::Stmt::Item(_) => {}
            syn::Stmt::Expr(e, _) => self.expr(e),
            syn::Stmt::Macro(m) => self.tokens(m.mac.tokens.clone()),
        }
    }

    fn declare_pat(&mut self, pat: &syn::Pat) {
        let mut found = Vec::new();
        super::lower::collect_pat(pat, &mut found);
        for (i, _, _) in found {
            self.declare(&i, Ref::Local);
        }
    }

    fn expr(&mut self, e: &Expr) {
        let mut v = Uses { s: self };
        v.visit_expr(e);
    }

    fn syn_block(&mut self, b: &syn::Block) {
        self.push();
        for s in &b.stmts {
            self.syn_stmt(s);
        }
        self.pop();
    }

    /// Identifiers in a macro call's tokens, and `{name}` in its string literals, are
    /// taken as uses (an over-approximation).
    fn tokens(&mut self, ts: proc_macro2::TokenStream) {
        for tt in ts {
            match tt {
                proc_macro2::TokenTree::Ident(i) => self.use_name(&name(&i)),
                proc_macro2::TokenTree::Group(g) => self.tokens(g.stream()),
                proc_macro2::TokenTree::Literal(l) => {
                    let text = l.to_string();
                    for part in text.split('{').skip(1) {
                        let n: String = part
                            .chars()
                            .take_while(|c| c.is_alphanumeric() || *c == '_')
                            .collect();
                        if !n.is_empty() {
                            self.use_name(&n);
                        }
                    }
                }
                proc_macro2::TokenTree::Punct(_) => {}
            }
        }
    }

    // ---- lowered code ----

    fn block(&mut self, b: &Block) {
        self.push();
        for s in &b.stmts {
            self.stmt(s);
        }
        if let Some(t) = &b.tail {
            self.expr(t);
        }
        self.pop();
    }

    fn stmt(&mut self, s: &Stmt) {
        match s {
            Stmt::Plain { stmt, .. } => self.syn_stmt(stmt),
            Stmt::Deferred { bind, .. } => self.declare(&bind.ident, Ref::Local),
            Stmt::Point(p) => {
                self.expr(&p.expr);
                self.target(&p.target);
            }
            Stmt::If { cond, then, els } => {
                self.cond_then(cond, then);
                if let Some(e) = els {
                    self.block(e);
                }
            }
            Stmt::Match { scrut, arms } => {
                self.expr(scrut);
                for a in arms {
                    self.push();
                    self.declare_binds(&a.binds, false);
                    if let Some(g) = &a.guard {
                        self.expr(g);
                    }
                    self.block(&a.body);
                    self.pop();
                }
            }
            Stmt::Loop { body, .. } | Stmt::Block { body, .. } => self.block(body),
            Stmt::While { cond, body, .. } => self.cond_then(cond, body),
        }
    }

    fn cond_then(&mut self, cond: &Cond, then: &Block) {
        match cond {
            Cond::Expr(e) => {
                self.expr(e);
                self.block(then);
            }
            Cond::Let { expr, binds, .. } => {
                self.expr(expr);
                self.push();
                self.declare_binds(binds, false);
                self.block(then);
                self.pop();
            }
        }
    }

    fn target(&mut self, t: &Target) {
        match t {
            Target::Let { binds, ty, .. } => {
                let _ = ty;
                self.declare_binds(binds, false);
            }
            Target::Assign(place) => self.expr(place),
            Target::Discard => {}
        }
    }
}

struct Uses<'s, 'a> {
    s: &'s mut Scopes<'a>,
}

impl<'ast> Visit<'ast> for Uses<'_, '_> {
    fn visit_expr_path(&mut self, p: &'ast syn::ExprPath) {
        if p.qself.is_none() {
            if let Some(i) = p.path.get_ident() {
                self.s.use_name(&name(i));
            }
        }
        syn::visit::visit_expr_path(self, p);
    }
    fn visit_block(&mut self, b: &'ast syn::Block) {
        self.s.syn_block(b);
    }
    fn visit_expr_closure(&mut self, c: &'ast syn::ExprClosure) {
        self.s.push();
        for p in &c.inputs {
            self.s.declare_pat(p);
        }
        self.visit_expr(&c.body);
        self.s.pop();
    }
    fn visit_arm(&mut self, a: &'ast syn::Arm) {
        self.s.push();
        self.s.declare_pat(&a.pat);
        if let Some((_, g)) = &a.guard {
            self.visit_expr(g);
        }
        self.visit_expr(&a.body);
        self.s.pop();
    }
    fn visit_expr_if(&mut self, i: &'ast syn::ExprIf) {
        if let Expr::Let(l) = &*i.cond {
            self.visit_expr(&l.expr);
            self.s.push();
            self.s.declare_pat(&l.pat);
            self.visit_block(&i.then_branch);
            self.s.pop();
        } else {
            self.visit_expr(&i.cond);
            self.visit_block(&i.then_branch);
        }
        if let Some((_, e)) = &i.else_branch {
            self.visit_expr(e);
        }
    }
    fn visit_expr_while(&mut self, w: &'ast syn::ExprWhile) {
        if let Expr::Let(l) = &*w.cond {
            self.visit_expr(&l.expr);
            self.s.push();
            self.s.declare_pat(&l.pat);
            self.visit_block(&w.body);
            self.s.pop();
        } else {
            self.visit_expr(&w.cond);
            self.visit_block(&w.body);
        }
    }
    fn visit_expr_for_loop(&mut self, f: &'ast syn::ExprForLoop) {
        self.visit_expr(&f.expr);
        self.s.push();
        self.s.declare_pat(&f.pat);
        self.visit_block(&f.body);
        self.s.pop();
    }
    fn visit_macro(&mut self, m: &'ast syn::Macro) {
        self.s.tokens(m.tokens.clone());
    }
    fn visit_item(&mut self, _: &'ast syn::Item) {}
}

/// One step of the path from the body to an await: the index of the statement that
/// contains it, and where inside that statement.
#[derive(Clone, Debug)]
pub(crate) enum Step {
    /// The await is this statement.
    Here,
    /// In the `then` (0) or `else` (1) branch of an `if`.
    Branch(usize, Vec<(usize, Step)>),
    /// In arm `k` of a `match`.
    Arm(usize, Vec<(usize, Step)>),
    /// In the body of a `loop`, `while` or block.
    Body(Vec<(usize, Step)>),
}

/// The paths to every await, by index.
pub(crate) fn paths(body: &Block) -> Vec<Vec<(usize, Step)>> {
    fn walk(b: &Block, prefix: &mut [(usize, Step)], out: &mut Vec<Option<Vec<(usize, Step)>>>) {
        for (i, s) in b.stmts.iter().enumerate() {
            match s {
                Stmt::Point(p) => {
                    let mut path = prefix.to_vec();
                    path.push((i, Step::Here));
                    let idx = p.index as usize;
                    if out.len() <= idx {
                        out.resize(idx + 1, None);
                    }
                    out[idx] = Some(path);
                }
                Stmt::If { then, els, .. } => {
                    for (k, branch) in std::iter::once(then).chain(els.iter()).enumerate() {
                        nested(branch, prefix, i, |sub| Step::Branch(k, sub), out);
                    }
                }
                Stmt::Match { arms, .. } => {
                    for (k, a) in arms.iter().enumerate() {
                        nested(&a.body, prefix, i, |sub| Step::Arm(k, sub), out);
                    }
                }
                Stmt::Loop { body, .. } | Stmt::While { body, .. } | Stmt::Block { body, .. } => {
                    nested(body, prefix, i, Step::Body, out);
                }
                Stmt::Plain { .. } | Stmt::Deferred { .. } => {}
            }
        }
    }
    fn nested(
        b: &Block,
        prefix: &[(usize, Step)],
        i: usize,
        wrap: impl Fn(Vec<(usize, Step)>) -> Step,
        out: &mut Vec<Option<Vec<(usize, Step)>>>,
    ) {
        let mut inner = Vec::new();
        let start = out.clone();
        walk(b, &mut inner, out);
        for (idx, slot) in out.iter_mut().enumerate() {
            let was = start.get(idx).and_then(|s| s.as_ref()).is_some();
            if let (Some(sub), false) = (slot.as_mut(), was) {
                let mut path = prefix.to_vec();
                path.push((i, wrap(std::mem::take(sub))));
                *sub = path;
            }
        }
    }
    let mut out = Vec::new();
    walk(body, &mut [], &mut out);
    out.into_iter()
        .map(|p| p.expect("every point has a path"))
        .collect()
}

/// The bindings a statement declares at its own level.
pub(crate) fn level_binds(s: &Stmt) -> Vec<&Bind> {
    match s {
        Stmt::Plain { binds, .. } => binds.iter().collect(),
        Stmt::Deferred { bind, .. } => vec![bind],
        Stmt::Point(p) => match &p.target {
            Target::Let { binds, .. } => binds.iter().collect(),
            _ => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// What resuming at the await reached by `path` needs.
pub(crate) fn needs(
    params: &[Bind],
    body: &Block,
    path: &[(usize, Step)],
    binds: &[Bind],
) -> Needs {
    let mut s = Scopes {
        stack: Vec::new(),
        binds,
        needs: Needs::default(),
    };
    s.push();
    s.declare_binds(params, true);
    cont_block(&mut s, body, path, &[]);
    s.needs
}

fn cont_block(s: &mut Scopes<'_>, b: &Block, path: &[(usize, Step)], construct: &[Bind]) {
    let (m, step) = &path[0];
    s.push();
    s.declare_binds(construct, true);
    for stmt in &b.stmts[..*m] {
        for bind in level_binds(stmt) {
            s.declare(&bind.ident, Ref::Restored(bind.id));
        }
    }
    let here = &b.stmts[*m];
    if let (Stmt::Point(_), Step::Here) = (here, step) {
        for scope in &s.stack {
            for (n, r) in scope {
                match r {
                    Ref::Restored(id) => {
                        s.needs.visible.insert(n.clone(), *id);
                    }
                    Ref::Local => {
                        s.needs.visible.remove(n);
                    }
                }
            }
        }
    }
    if let (Stmt::Point(p), Step::Here) = (here, step) {
        if p.rebuild {
            // A resume evaluates the expression again.
            s.expr(&p.expr);
        }
    }
    match (here, step) {
        (Stmt::Point(p), Step::Here) => match &p.target {
            Target::Assign(Expr::Path(place)) if place.path.get_ident().is_some() => {
                let n = name(place.path.get_ident().expect("checked"));
                match s.lookup(&n) {
                    Some(Ref::Restored(id)) if binds_deferred(s, id) => {
                        s.needs.redeclared.insert(id);
                    }
                    _ => s.use_name(&n),
                }
            }
            t => s.target(t),
        },
        (Stmt::If { cond, then, els }, Step::Branch(k, sub)) => {
            let branch = if *k == 0 {
                then
            } else {
                els.as_ref().expect("else")
            };
            let cb: Vec<Bind> = match (cond, k) {
                (Cond::Let { binds, .. }, 0) => binds.clone(),
                _ => Vec::new(),
            };
            cont_block(s, branch, sub, &cb);
        }
        (Stmt::Match { arms, .. }, Step::Arm(k, sub)) => {
            let arm = &arms[*k];
            cont_block(s, &arm.body, sub, &arm.binds);
        }
        (Stmt::Loop { body, .. }, Step::Body(sub))
        | (Stmt::Block { body, .. }, Step::Body(sub)) => {
            cont_block(s, body, sub, &[]);
            if matches!(here, Stmt::Loop { .. }) {
                s.stmt(here);
            }
        }
        (Stmt::While { cond, body, .. }, Step::Body(sub)) => {
            let cb: Vec<Bind> = match cond {
                Cond::Let { binds, .. } => binds.clone(),
                Cond::Expr(_) => Vec::new(),
            };
            cont_block(s, body, sub, &cb);
            s.stmt(here);
        }
        _ => unreachable!("paths follow the lowered structure"),
    }
    for stmt in &b.stmts[m + 1..] {
        s.stmt(stmt);
    }
    if let Some(t) = &b.tail {
        s.expr(t);
    }
    s.pop();
}

fn binds_deferred(s: &Scopes<'_>, id: usize) -> bool {
    s.binds[id].deferred
}
