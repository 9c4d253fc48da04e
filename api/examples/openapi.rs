//! Prints the api's OpenAPI document, as `/openapi.json` serves it (`make contract` writes it to
//! `api/openapi.json`; a test fails while the committed file is stale).

fn main() {
    let doc = api::routes::openapi(&jobs_contract::kinds::catalog());
    println!(
        "{}",
        serde_json::to_string_pretty(&doc).expect("documents serialize")
    );
}
