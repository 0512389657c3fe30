//! A descriptor registration as the directory authority's HTTP handler
//! receives it (`POST /v1/descriptors`): the raw body through
//! `directory::decode_registration`, then `Directory::register`, the
//! function the handler calls (verification, admission, store), on a real
//! authority in a scratch directory that admits the seeds' node.
#![no_main]

use directory::{Directory, DirectoryConfig};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn authority() -> &'static Directory {
    static DIR: OnceLock<Directory> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = std::env::temp_dir().join(format!("umbra-fuzz-directory-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("scratch directory");
        let admitted = dir.join("admitted.toml");
        std::fs::write(
            &admitted,
            format!(
                "[[node]]\nidentity = \"{}\"\nrole = \"mix\"\n",
                hex::encode(umbra_fuzz::node_key().verifying_key().to_bytes())
            ),
        )
        .expect("admission file");
        let cfg = DirectoryConfig {
            data_dir: dir,
            epoch_length_secs: umbra_fuzz::EPOCH_LEN_MS / 1000,
            genesis_unix_ms: 0,
            test_network: true,
            admission_file: Some(admitted),
            ..DirectoryConfig::default()
        };
        Directory::open(cfg).expect("a directory in a scratch directory")
    })
}

fuzz_target!(|data: &[u8]| {
    let dir = authority();
    let Ok(signed) = directory::decode_registration(data) else {
        return;
    };
    let _ = dir.register(&signed, umbra_fuzz::NOW_MS);
});
