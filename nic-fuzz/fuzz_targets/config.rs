//! Feeds arbitrary text to the config loader (`epochgate::config::Config::from_toml_str`, what
//! `Config::load` runs on a file's text): TOML parsing and every validation.
//!
//! Beyond "never panics", it checks the loader's promises: a rejection names something (a
//! `config:` parse error with toml's text, or an invalid value's key and why); a config that is
//! accepted can be shown (`check-config`'s topology), its EAL argument list built, and every one
//! of its ports has the key errors would name it by.

#![no_main]

use epochgate::config::{eal_args, Config, ConfigError};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A config file is read with read_to_string: text that is not UTF-8 never gets this far.
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::from_toml_str(text) {
        Ok(cfg) => {
            assert!(!cfg.topology().is_empty());
            let ports = cfg.ports();
            let _ = eal_args(&cfg.eal, &ports);
            let keys = cfg.port_keys();
            assert_eq!(keys.len(), ports.len());
            assert!(keys.iter().all(|(k, _)| k.ends_with("port")), "{keys:?}");
        }
        Err(e) => {
            let shown = e.to_string();
            match &e {
                ConfigError::Parse(why) => {
                    assert!(
                        !why.trim().is_empty(),
                        "a parse error says nothing: {shown}"
                    )
                }
                ConfigError::Invalid { key, why } => {
                    assert!(!key.trim().is_empty(), "an error names no key: {shown}");
                    assert!(!why.trim().is_empty(), "an error says no why: {shown}");
                    assert!(shown.starts_with(key.as_str()), "{shown}");
                }
                ConfigError::Io { .. } => panic!("parsing text read a file and failed: {shown}"),
            }
        }
    }
});
