//! The conformance suite on the in-memory transport, under virtual time (no broker).

dtasks_integration_tests::conformance_suite!(
    dtasks_integration_tests::conformance::MemoryEnv::new()
);

/// The suite's list of scenarios is written by hand: every `pub async fn` of the scenario
/// files must be in it, or it would never run on any transport.
#[test]
fn every_scenario_is_in_the_suite() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/conformance");
    let suite = std::fs::read_to_string(src.join("mod.rs")).expect("the suite's module");
    let start = suite
        .find("conformance_suite!(@each #[$attr] $name => $env;")
        .expect("the list of scenarios");
    let listed = &suite[start..start + suite[start..].find(");").expect("its end")];
    let mut scenarios = 0;
    for file in std::fs::read_dir(src.join("scenarios")).expect("the scenario files") {
        let text = std::fs::read_to_string(file.expect("a file").path()).expect("readable");
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("pub async fn ") {
                let name: String = rest
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                assert!(
                    listed.contains(&format!("{name},")),
                    "scenario `{name}` is not in conformance_suite!"
                );
                scenarios += 1;
            }
        }
    }
    assert_eq!(
        listed.matches(',').count(),
        scenarios,
        "conformance_suite! lists a name that is not a scenario"
    );
}
