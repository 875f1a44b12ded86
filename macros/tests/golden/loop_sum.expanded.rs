fn loop_sum(n: u64) -> ::dtasks::Call<u64> {
    ::dtasks::__private::call::<u64, _>("loop_sum", &(n,))
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
        enum __At<L_total, L_dt_it0> {
            Start(u64),
            P0 {
                total: L_total,
                dt_it0: L_dt_it0,
                __dt_pending: ::core::option::Option<__dt::Pending>,
            },
            P1 { total: L_total, __dt_pending: ::core::option::Option<__dt::Pending> },
        }
        let __dt_ty_total = __dt::Ty::new();
        let __dt_ty_dt_it0 = __dt::Ty::new();
        let __dt_k0 = __dt::Ty::new();
        let __dt_k1 = __dt::Ty::new();
        let __dt_c0_total = __dt::codec(&__dt_k0, &__dt_ty_total);
        let __dt_c0_dt_it0 = __dt::codec(&__dt_k0, &__dt_ty_dt_it0);
        let __dt_c1_total = __dt::codec(&__dt_k1, &__dt_ty_total);
        let __dt_at = match __dt_resume {
            ::core::option::Option::None => {
                let (n,): (u64,) = ::dtasks::__private::decode_args("loop_sum", input)?;
                __At::Start(n)
            }
            ::core::option::Option::Some(__dt_resume) => {
                match __dt_resume.point() {
                    0u32 => {
                        let mut __dt_r = __dt_resume.reader(&__dt_k0);
                        let __dt_at = __At::P0 {
                            total: __dt_r.take(&__dt_c0_total)?,
                            dt_it0: __dt_r.take(&__dt_c0_dt_it0)?,
                            __dt_pending: ::core::option::Option::Some(
                                __dt_resume.pending(),
                            ),
                        };
                        __dt_r.finish()?;
                        __dt_at
                    }
                    1u32 => {
                        let mut __dt_r = __dt_resume.reader(&__dt_k1);
                        let __dt_at = __At::P1 {
                            total: __dt_r.take(&__dt_c1_total)?,
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
                u64,
                _,
            >(async move {
                match __dt_at {
                    __At::Start(__dt_a0) => {
                        let n: u64 = __dt_a0;
                        let mut total = 0;
                        let mut __dt_it0 = __dt::for_iter(0..n);
                        while let ::core::option::Option::Some(i) = ::core::iter::Iterator::next(
                            &mut __dt_it0,
                        ) {
                            let v = __dt::point!(
                                0u32, __dt_k0, add_one(i), ::core::line!(), [__dt_c0_total
                                => total, __dt_c0_dt_it0 => __dt_it0]
                            );
                            total += v;
                        }
                        __dt::point!(
                            1u32, __dt_k1, DTask::delay(Duration::from_secs(60)),
                            ::core::line!(), [__dt_c1_total => total]
                        );
                        total
                    }
                    __At::P0 {
                        total: __dt_s_total,
                        dt_it0: __dt_s_dt_it0,
                        mut __dt_pending,
                    } => {
                        let mut total = __dt_s_total;
                        let mut __dt_it0 = __dt_s_dt_it0;
                        let mut __dt_first0 = ::core::option::Option::Some(());
                        loop {
                            if let ::core::option::Option::Some(()) = __dt_first0.take()
                            {
                                let v = __dt::resume_point!(
                                    0u32, __dt_k0, __dt_pending, ::core::line!(), [__dt_c0_total
                                    => total, __dt_c0_dt_it0 => __dt_it0]
                                );
                                total += v;
                            } else {
                                let ::core::option::Option::Some(i) = ::core::iter::Iterator::next(
                                    &mut __dt_it0,
                                ) else {
                                    break;
                                };
                                let v = __dt::point!(
                                    0u32, __dt_k0, add_one(i), ::core::line!(), [__dt_c0_total
                                    => total, __dt_c0_dt_it0 => __dt_it0]
                                );
                                total += v;
                            }
                        };
                        __dt::point!(
                            1u32, __dt_k1, DTask::delay(Duration::from_secs(60)),
                            ::core::line!(), [__dt_c1_total => total]
                        );
                        total
                    }
                    __At::P1 { total: __dt_s_total, mut __dt_pending } => {
                        let mut total = __dt_s_total;
                        __dt::resume_point!(
                            1u32, __dt_k1, __dt_pending, ::core::line!(), [__dt_c1_total
                            => total]
                        );
                        total
                    }
                }
            }),
        )
    }
    fn __dtask_type_id() -> ::core::any::TypeId {
        ::dtasks::__private::type_id_of(&loop_sum)
    }
    ::dtasks::__private::inventory::submit! {
        ::dtasks::__private::Registration::snapshot("loop_sum",
        ::core::concat!(::core::module_path!(), "::", ::core::stringify!(loop_sum)),
        __dtask_type_id, __dtask_run, 11502144874272578789u64, & [],)
    }
};
