fn checkout(order: Order) -> ::dtasks::Call<Result<Receipt, PayError>> {
    ::dtasks::__private::call::<Result<Receipt, PayError>, _>("checkout", &(order,))
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
        enum __At<L_order, L_paid> {
            Start(Order),
            P0 { order: L_order, __dt_pending: ::core::option::Option<__dt::Pending> },
            P1 { paid: L_paid, __dt_pending: ::core::option::Option<__dt::Pending> },
        }
        let __dt_ty_order = __dt::Ty::new();
        let __dt_ty_paid = __dt::Ty::new();
        let __dt_k0 = __dt::Ty::new();
        let __dt_k1 = __dt::Ty::new();
        let __dt_c0_order = __dt::codec(&__dt_k0, &__dt_ty_order);
        let __dt_c1_paid = __dt::codec(&__dt_k1, &__dt_ty_paid);
        let __dt_at = match __dt_resume {
            ::core::option::Option::None => {
                let (order,): (Order,) = ::dtasks::__private::decode_args(
                    "checkout",
                    input,
                )?;
                __At::Start(order)
            }
            ::core::option::Option::Some(__dt_resume) => {
                match __dt_resume.point() {
                    0u32 => {
                        let mut __dt_r = __dt_resume.reader(&__dt_k0);
                        let __dt_at = __At::P0 {
                            order: __dt_r.take(&__dt_c0_order)?,
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
                            paid: __dt_r.take(&__dt_c1_paid)?,
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
                Result<Receipt, PayError>,
                _,
            >(async move {
                match __dt_at {
                    __At::Start(__dt_a0) => {
                        let order: Order = __dt_a0;
                        let __dt_t0 = __dt::point!(
                            0u32, __dt_k0, charge(order.cents), ::core::line!(),
                            [__dt_c0_order => order]
                        );
                        let paid = __dt_t0?;
                        let __dt_v1;
                        match order.kind {
                            Kind::Gift => {
                                let card = __dt::point!(
                                    1u32, __dt_k1, write_card(order.id), ::core::line!(),
                                    [__dt_c1_paid => paid]
                                );
                                __dt_v1 = format!("gift {card}");
                            }
                            Kind::Plain => {
                                __dt_v1 = String::new();
                            }
                        };
                        let note = __dt_v1;
                        if note.is_empty() {
                            return Ok(Receipt { paid, note: None });
                        }
                        Ok(Receipt { paid, note: Some(note) })
                    }
                    __At::P0 { order: __dt_s_order, mut __dt_pending } => {
                        let order = __dt_s_order;
                        let __dt_t0 = __dt::resume_point!(
                            0u32, __dt_k0, __dt_pending, ::core::line!(), [__dt_c0_order
                            => order]
                        );
                        let paid = __dt_t0?;
                        let __dt_v1;
                        match order.kind {
                            Kind::Gift => {
                                let card = __dt::point!(
                                    1u32, __dt_k1, write_card(order.id), ::core::line!(),
                                    [__dt_c1_paid => paid]
                                );
                                __dt_v1 = format!("gift {card}");
                            }
                            Kind::Plain => {
                                __dt_v1 = String::new();
                            }
                        };
                        let note = __dt_v1;
                        if note.is_empty() {
                            return Ok(Receipt { paid, note: None });
                        }
                        Ok(Receipt { paid, note: Some(note) })
                    }
                    __At::P1 { paid: __dt_s_paid, mut __dt_pending } => {
                        let paid = __dt_s_paid;
                        let __dt_v1;
                        {
                            let card = __dt::resume_point!(
                                1u32, __dt_k1, __dt_pending, ::core::line!(), [__dt_c1_paid
                                => paid]
                            );
                            __dt_v1 = format!("gift {card}");
                        }
                        let note = __dt_v1;
                        if note.is_empty() {
                            return Ok(Receipt { paid, note: None });
                        }
                        Ok(Receipt { paid, note: Some(note) })
                    }
                }
            }),
        )
    }
    fn __dtask_type_id() -> ::core::any::TypeId {
        ::dtasks::__private::type_id_of(&checkout)
    }
    ::dtasks::__private::inventory::submit! {
        ::dtasks::__private::Registration::snapshot("checkout",
        ::core::concat!(::core::module_path!(), "::", ::core::stringify!(checkout)),
        __dtask_type_id, __dtask_run, 3554258110310787320u64, & [],)
    }
};
