//! Writes each kind's payload schema to `DIR/<kind>.schema.json` (`make contract` writes them to
//! `jobs-contract/schemas/`, for workers in other languages; a test fails while they are stale).

use std::path::PathBuf;

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args().nth(1).unwrap_or_else(|| "schemas".into()));
    std::fs::create_dir_all(&dir)?;
    let catalog = jobs_contract::kinds::catalog();
    for kind in catalog.names() {
        let schema = catalog.schema(kind).expect("every kind has a schema");
        let text = serde_json::to_string_pretty(&schema).expect("schemas serialize") + "\n";
        std::fs::write(dir.join(format!("{kind}.schema.json")), text)?;
    }
    Ok(())
}
