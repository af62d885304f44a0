use super::*;

#[test]
fn empty_config_takes_defaults() {
    let c = Config::parse("").unwrap();
    assert_eq!(c.limits.max_event_bytes, DEFAULT_MAX_EVENT_BYTES);
    assert_eq!(c.dispatch.lease_secs, 300);
}

#[test]
fn unknown_keys_are_named() {
    let err = Config::parse("[limits]\nmax_event_byte = 10\n").unwrap_err().to_string();
    assert!(err.contains("max_event_byte"), "{err}");
    let err = Config::parse("[handlers.a]\ncomponent='a.wasm'\nevents=['x.y']\ngrant=[]\n").unwrap_err().to_string();
    assert!(err.contains("grant"), "{err}");
}

#[test]
fn grants_stay_inside_the_root() {
    for dir in ["../etc", "/etc", "state/../../x"] {
        let text = format!("[handlers.a]\ncomponent='a.wasm'\nevents=['x.y']\ngrants=[{{dir={dir:?}, mode='ro'}}]\n");
        let err = format!("{:#}", Config::parse(&text).unwrap_err());
        assert!(err.contains("inside the root"), "{dir}: {err}");
    }
}

fn with_grants(handlers: &[(&str, &str)]) -> Result<Config> {
    let mut text = String::new();
    for (name, grants) in handlers {
        text.push_str(&format!("[handlers.{name}]\ncomponent='a.wasm'\nevents=['x.y']\ngrants=[{grants}]\n"));
    }
    Config::parse(&text)
}

#[test]
fn runtime_dirs_need_an_explicit_opt_in() {
    for dir in [".", "events", "events/archive", "events/queue", "cache", "handlers", "run", "kv", "cortex.toml"] {
        let err = format!("{:#}", with_grants(&[("a", &format!("{{dir={dir:?}, mode='rw'}}"))]).unwrap_err());
        assert!(err.contains("runtime's own") && err.contains("unsafe_allow"), "{dir}: {err}");
        let c = with_grants(&[("a", &format!("{{dir={dir:?}, mode='rw', unsafe_allow=true}}"))]).unwrap();
        assert!(c.handlers["a"].grants[0].unsafe_allow, "{dir}");
    }
    for dir in ["cache", "events", "events/queue", "."] {
        assert!(with_grants(&[("a", &format!("{{dir={dir:?}, mode='ro'}}"))]).is_err(), "{dir} ro");
    }
    with_grants(&[("a", "{dir='events/archive', mode='ro'}")]).unwrap();
    with_grants(&[("a", "{dir='state/a', mode='rw'}"), ("b", "{dir='reports', mode='rw'}")]).unwrap();
}

#[test]
fn read_write_grants_must_not_overlap() {
    for (a, b) in [
        ("{dir='state', mode='rw'}", "{dir='state/b', mode='ro'}"),
        ("{dir='state/b', mode='rw'}", "{dir='state', mode='ro'}"),
        ("{dir='state/x', mode='rw'}", "{dir='./state/x/', mode='rw'}"),
        ("{dir='state/x', mode='ro'}", "{dir='state/x', mode='rw'}"),
    ] {
        let err = format!("{:#}", with_grants(&[("a", a), ("b", b)]).unwrap_err());
        assert!(err.contains("overlaps"), "{a} {b}: {err}");
        let both = format!("{a}, {b}");
        assert!(with_grants(&[("a", &both)]).is_err(), "one handler: {both}");
    }
    with_grants(&[("a", "{dir='state/x', mode='ro'}"), ("b", "{dir='state/x', mode='ro'}")]).unwrap();
    with_grants(&[("a", "{dir='state/xy', mode='rw'}"), ("b", "{dir='state/x', mode='rw'}")]).unwrap();
}

#[test]
fn emit_trust_defaults_are_narrow_and_checked() {
    let c = Config::parse("[handlers.a]\ncomponent='a.wasm'\nevents=['x.*']\n").unwrap();
    let h = &c.handlers["a"];
    assert_eq!(
        (h.emits.as_ref(), h.max_priority, h.may_set_source, h.may_set_master),
        (None, Priority::High, false, false)
    );
    assert_eq!(c.dispatch.max_hops, 16);
    let c = Config::parse(
            "[handlers.a]\ncomponent='a.wasm'\nevents=['x.*']\nemits=['task.*']\nmax_priority='critical'\nmay_set_source=true\n",
        )
        .unwrap();
    assert_eq!(c.handlers["a"].emits.as_deref(), Some(&["task.*".to_string()][..]));
    assert_eq!(c.handlers["a"].max_priority, Priority::Critical);
    let err = format!(
        "{:#}",
        Config::parse("[handlers.a]\ncomponent='a.wasm'\nevents=['x.*']\nemits=['Task!']\n").unwrap_err()
    );
    assert!(err.contains("handlers.a.emits"), "{err}");
    let err = format!(
        "{:#}",
        Config::parse("[handlers.a]\ncomponent='a.wasm'\nevents=['x.*']\nmax_priority='urgent'\n").unwrap_err()
    );
    assert!(err.contains("urgent"), "{err}");
    assert!(Config::parse("[dispatch]\nmax_hops = 0\n").is_err());
}

#[test]
fn the_default_config_parses() {
    let c = Config::parse(crate::DEFAULT_CONFIG).unwrap();
    assert_eq!(c.handlers["on-security-alert"].max_priority, Priority::Critical);
    assert!(c.handlers["on-routing-decision"].may_set_master);
}

#[test]
fn settings_are_strings_to_handlers() {
    let c = Config::parse(
        "[handlers.a]\ncomponent='a.wasm'\nevents=['x.*']\n[handlers.a.settings]\nn = 3\ns = 'x'\nb = true\n",
    )
    .unwrap();
    let h = &c.handlers["a"];
    assert_eq!(h.setting("n").as_deref(), Some("3"));
    assert_eq!(h.setting("s").as_deref(), Some("x"));
    assert_eq!(h.setting("b").as_deref(), Some("true"));
    assert_eq!(h.setting("missing"), None);
    assert!(h.matches("x.anything"));
}
