//! Config files: the TOML loader every role uses (`umbra::config::parse`)
//! for the directory authority's, the mix node's and the gateway's config,
//! and the authority's admission file (`directory::parse_admission`).
#![no_main]

use directory::DirectoryConfig;
use gateway::GatewayConfig;
use libfuzzer_sys::fuzz_target;
use mixnode::MixnodeConfig;
use std::path::Path;
use umbra::config::parse;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let path = Path::new("fuzz.toml");
    if let Ok(d) = parse::<DirectoryConfig>(path, text) {
        let _ = d.params.check();
        let _ = d.admission_path();
    }
    let _ = parse::<MixnodeConfig>(path, text);
    let _ = parse::<GatewayConfig>(path, text);
    let _ = directory::parse_admission(path, text);
});
