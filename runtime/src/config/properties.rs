//! Property tests: the config loader never panics, and an unknown key is
//! always named in the error.
use super::*;
use proptest::prelude::*;

proptest! {
    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        let _ = Config::parse(&text);
    }

    #[test]
    fn arbitrary_tables_never_panic(
        section in prop::sample::select(vec!["events", "limits", "dispatch", "handlers.a", "handlers.a.limits", "handlers.a.settings", "x"]),
        key in "[a-z_]{1,16}",
        value in prop::sample::select(vec!["1", "-1", "0", "\"s\"", "true", "[]", "[\"x.y\"]", "{}", "1.5", "18446744073709551616"]),
    ) {
        let text = format!("[{section}]\n{key} = {value}\n");
        let _ = Config::parse(&text);
    }

    #[test]
    fn unknown_keys_are_named(key in "[a-z]{3,12}_typo") {
        let err = format!("{:#}", Config::parse(&format!("[limits]\n{key} = 1\n")).unwrap_err());
        prop_assert!(err.contains(&key), "{}", err);
    }
}
