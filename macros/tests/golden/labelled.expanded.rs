fn search(rows: u64, cols: u64) -> ::dtasks::Call<Option<(u64, u64)>> {
    ::dtasks::__private::call::<Option<(u64, u64)>, _>("search", &(rows, cols))
}
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
        /// Where the machine starts: at the top, or at an await with its saved locals.
        enum __At<L_rows, L_cols, L_r, L_dt_it1, L_c> {
            Start(u64, u64),
            P0 {
                rows: L_rows,
                cols: L_cols,
                r: L_r,
                dt_it1: L_dt_it1,
                c: L_c,
                __dt_pending: ::core::option::Option<__dt::Pending>,
            },
        }
        let __dt_ty_rows = __dt::Ty::new();
        let __dt_ty_cols = __dt::Ty::new();
        let __dt_ty_r = __dt::Ty::new();
        let __dt_ty_dt_it1 = __dt::Ty::new();
        let __dt_ty_c = __dt::Ty::new();
        let __dt_k0 = __dt::Ty::new();
        let __dt_c0_rows = __dt::codec(&__dt_k0, &__dt_ty_rows);
        let __dt_c0_cols = __dt::codec(&__dt_k0, &__dt_ty_cols);
        let __dt_c0_r = __dt::codec(&__dt_k0, &__dt_ty_r);
        let __dt_c0_dt_it1 = __dt::codec(&__dt_k0, &__dt_ty_dt_it1);
        let __dt_c0_c = __dt::codec(&__dt_k0, &__dt_ty_c);
        let __dt_at = match __dt_resume {
            ::core::option::Option::None => {
                let (rows, cols): (u64, u64) = ::dtasks::__private::decode_args(
                    "search",
                    input,
                )?;
                __At::Start(rows, cols)
            }
            ::core::option::Option::Some(__dt_resume) => {
                match __dt_resume.point() {
                    0u32 => {
                        let mut __dt_r = __dt_resume.reader(&__dt_k0);
                        let __dt_at = __At::P0 {
                            rows: __dt_r.take(&__dt_c0_rows)?,
                            cols: __dt_r.take(&__dt_c0_cols)?,
                            r: __dt_r.take(&__dt_c0_r)?,
                            dt_it1: __dt_r.take(&__dt_c0_dt_it1)?,
                            c: __dt_r.take(&__dt_c0_c)?,
                            __dt_pending: ::core::option::Option::Some(
                                __dt_resume.pending(),
                            ),
                        };
                        __dt_r.finish()?;
                        __dt_at
                    }
                    __dt_p => return ::core::result::Result::Err(__dt::bad_point(__dt_p)),
                }
            }
        };
        ::core::result::Result::Ok(
            ::dtasks::__private::body::<
                Option<(u64, u64)>,
                _,
            >(async move {
                match __dt_at {
                    __At::Start(__dt_a0, __dt_a1) => {
                        let rows: u64 = __dt_a0;
                        let cols: u64 = __dt_a1;
                        let __dt_v0;
                        'rows: loop {
                            let mut r = 0;
                            while r < rows {
                                let mut __dt_it1 = __dt::for_iter(0..cols);
                                while let ::core::option::Option::Some(c) = ::core::iter::Iterator::next(
                                    &mut __dt_it1,
                                ) {
                                    let hit = __dt::point!(
                                        0u32, __dt_k0, probe(r, c), ::core::line!(), [__dt_c0_rows
                                        => rows, __dt_c0_cols => cols, __dt_c0_r => r,
                                        __dt_c0_dt_it1 => __dt_it1, __dt_c0_c => c]
                                    );
                                    if hit {
                                        {
                                            __dt_v0 = Some((r, c));
                                            break 'rows;
                                        };
                                    }
                                }
                                r += 1;
                            }
                            {
                                __dt_v0 = None;
                                break;
                            };
                        };
                        let found = __dt_v0;
                        let found = found.map(|(r, c)| (r + 1, c + 1));
                        found
                    }
                    __At::P0 {
                        rows: __dt_s_rows,
                        cols: __dt_s_cols,
                        r: __dt_s_r,
                        dt_it1: __dt_s_dt_it1,
                        c: __dt_s_c,
                        mut __dt_pending,
                    } => {
                        let rows = __dt_s_rows;
                        let cols = __dt_s_cols;
                        let __dt_v0;
                        let mut __dt_first0 = ::core::option::Option::Some((
                            __dt_s_r,
                            __dt_s_dt_it1,
                            __dt_s_c,
                        ));
                        'rows: loop {
                            if let ::core::option::Option::Some(
                                (__dt_s_r, __dt_s_dt_it1, __dt_s_c),
                            ) = __dt_first0.take()
                            {
                                let mut r = __dt_s_r;
                                let mut __dt_first1 = ::core::option::Option::Some((
                                    __dt_s_dt_it1,
                                    __dt_s_c,
                                ));
                                loop {
                                    if let ::core::option::Option::Some(
                                        (__dt_s_dt_it1, __dt_s_c),
                                    ) = __dt_first1.take()
                                    {
                                        let mut __dt_it1 = __dt_s_dt_it1;
                                        let mut __dt_first2 = ::core::option::Option::Some((
                                            __dt_s_c,
                                        ));
                                        loop {
                                            if let ::core::option::Option::Some((__dt_s_c,)) = __dt_first2
                                                .take()
                                            {
                                                let c = __dt_s_c;
                                                let hit = __dt::resume_point!(
                                                    0u32, __dt_k0, __dt_pending, ::core::line!(), [__dt_c0_rows
                                                    => rows, __dt_c0_cols => cols, __dt_c0_r => r,
                                                    __dt_c0_dt_it1 => __dt_it1, __dt_c0_c => c]
                                                );
                                                if hit {
                                                    {
                                                        __dt_v0 = Some((r, c));
                                                        break 'rows;
                                                    };
                                                }
                                            } else {
                                                let ::core::option::Option::Some(c) = ::core::iter::Iterator::next(
                                                    &mut __dt_it1,
                                                ) else {
                                                    break;
                                                };
                                                let hit = __dt::point!(
                                                    0u32, __dt_k0, probe(r, c), ::core::line!(), [__dt_c0_rows
                                                    => rows, __dt_c0_cols => cols, __dt_c0_r => r,
                                                    __dt_c0_dt_it1 => __dt_it1, __dt_c0_c => c]
                                                );
                                                if hit {
                                                    {
                                                        __dt_v0 = Some((r, c));
                                                        break 'rows;
                                                    };
                                                }
                                            }
                                        };
                                        r += 1;
                                    } else {
                                        if !(r < rows) {
                                            break;
                                        }
                                        {
                                            let mut __dt_it1 = __dt::for_iter(0..cols);
                                            while let ::core::option::Option::Some(c) = ::core::iter::Iterator::next(
                                                &mut __dt_it1,
                                            ) {
                                                let hit = __dt::point!(
                                                    0u32, __dt_k0, probe(r, c), ::core::line!(), [__dt_c0_rows
                                                    => rows, __dt_c0_cols => cols, __dt_c0_r => r,
                                                    __dt_c0_dt_it1 => __dt_it1, __dt_c0_c => c]
                                                );
                                                if hit {
                                                    {
                                                        __dt_v0 = Some((r, c));
                                                        break 'rows;
                                                    };
                                                }
                                            }
                                            r += 1;
                                        }
                                    }
                                };
                                {
                                    __dt_v0 = None;
                                    break;
                                };
                            } else {
                                let mut r = 0;
                                while r < rows {
                                    let mut __dt_it1 = __dt::for_iter(0..cols);
                                    while let ::core::option::Option::Some(c) = ::core::iter::Iterator::next(
                                        &mut __dt_it1,
                                    ) {
                                        let hit = __dt::point!(
                                            0u32, __dt_k0, probe(r, c), ::core::line!(), [__dt_c0_rows
                                            => rows, __dt_c0_cols => cols, __dt_c0_r => r,
                                            __dt_c0_dt_it1 => __dt_it1, __dt_c0_c => c]
                                        );
                                        if hit {
                                            {
                                                __dt_v0 = Some((r, c));
                                                break 'rows;
                                            };
                                        }
                                    }
                                    r += 1;
                                }
                                {
                                    __dt_v0 = None;
                                    break;
                                };
                            }
                        };
                        let found = __dt_v0;
                        let found = found.map(|(r, c)| (r + 1, c + 1));
                        found
                    }
                }
            }),
        )
    }
    fn __dtask_type_id() -> ::core::any::TypeId {
        ::dtasks::__private::type_id_of(&search)
    }
    ::dtasks::__private::inventory::submit! {
        ::dtasks::__private::Registration::snapshot("search",
        ::core::concat!(::core::module_path!(), "::", ::core::stringify!(search)),
        __dtask_type_id, __dtask_run, 515217728140068818u64, & [],)
    }
};
