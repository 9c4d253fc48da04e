//! The OpenAPI document states the job contract, and the api keeps it: every request valid by
//! the document's schema for a kind is accepted, and the committed document is the served one.

use reqwest::StatusCode;
use serde_json::{Map, Value, json};

use crate::helpers::TestApp;

/// Instances of a (JSON Schema 2020-12) schema: its boundaries — each integer at its minimum,
/// then at its maximum — for the shapes the contract uses (objects, integers, booleans, strings).
fn instances(schema: &Value) -> [Value; 2] {
    [generate(schema, Bound::Low), generate(schema, Bound::High)]
}

#[derive(Clone, Copy)]
enum Bound {
    Low,
    High,
}

fn generate(schema: &Value, bound: Bound) -> Value {
    match schema["type"].as_str() {
        Some("object") => {
            let mut out = Map::new();
            for (name, field) in schema["properties"].as_object().into_iter().flatten() {
                out.insert(name.clone(), generate(field, bound));
            }
            Value::Object(out)
        }
        Some("integer") => {
            let low = schema["minimum"].as_i64().unwrap_or(0);
            let high = schema["maximum"].as_i64().unwrap_or(low + 1000);
            json!(match bound {
                Bound::Low => low,
                Bound::High => high,
            })
        }
        Some("boolean") => json!(matches!(bound, Bound::High)),
        Some("string") => json!("x"),
        other => panic!("the generator does not know type {other:?} in {schema}"),
    }
}

#[tokio::test]
async fn every_kind_accepts_what_its_schema_allows_and_refuses_what_it_does_not() {
    let app = TestApp::api_only().await;
    let (status, doc) = app.get("/openapi.json").await;
    assert_eq!(status, StatusCode::OK);
    let schemas = &doc["components"]["schemas"];
    let variants = schemas["CreateJob"]["oneOf"].as_array().expect("oneOf");
    let kinds: Vec<&str> = jobs_contract::kinds::catalog().names().collect();
    assert_eq!(variants.len(), kinds.len(), "one variant per kind");
    for variant in variants {
        let name = variant["$ref"]
            .as_str()
            .unwrap()
            .rsplit('/')
            .next()
            .unwrap();
        let schema = &schemas[name];
        let kind = schema["properties"]["kind"]["const"].as_str().unwrap();
        assert_eq!(
            schemas["CreateJob"]["discriminator"]["mapping"][kind],
            variant["$ref"]
        );
        let payload_schema = &schema["properties"]["payload"];
        let mut requests: Vec<Value> = schema["examples"].as_array().unwrap().clone();
        requests.extend(
            instances(payload_schema).map(|payload| json!({ "kind": kind, "payload": payload })),
        );
        for request in requests {
            let (status, _, body) = app.post(request.clone()).await;
            assert_eq!(
                status,
                StatusCode::ACCEPTED,
                "schema-valid {request} refused: {body}"
            );
        }
        // Each bound on its own, everything else valid: one past it is refused, 422, naming the
        // field, and nothing is stored.
        let stored = app.count_jobs().await;
        let valid = generate(payload_schema, Bound::High);
        for (name, field) in payload_schema["properties"].as_object().unwrap() {
            for beyond in [
                field["maximum"].as_i64().map(|max| max + 1),
                field["minimum"].as_i64().map(|min| min - 1),
            ]
            .into_iter()
            .flatten()
            {
                let mut payload = valid.clone();
                payload[name] = json!(beyond);
                let (status, _, body) = app.post(json!({ "kind": kind, "payload": payload })).await;
                assert_eq!(
                    status,
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "{kind}.{name} = {beyond}: {body}"
                );
                assert!(
                    body["detail"].as_str().unwrap().contains(name.as_str()),
                    "{kind}.{name} = {beyond}: the detail names the field: {body}"
                );
            }
        }
        // And a field the schema does not allow, on an otherwise valid payload.
        let mut unknown = valid.clone();
        unknown["not_in_the_schema"] = json!(1);
        let (status, _, body) = app.post(json!({ "kind": kind, "payload": unknown })).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{kind}: {body}");
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("not_in_the_schema"),
            "{body}"
        );
        assert_eq!(
            app.count_jobs().await,
            stored,
            "{kind}: refusals store nothing"
        );
    }
    app.stop().await;
}

/// JSON Schema's `integer` is any number with a zero fraction: `7.0` and `7e0` are integers too,
/// and are stored as `7`, so the worker reads the payload it would have read.
#[tokio::test]
async fn integers_written_with_a_fraction_or_exponent_are_integers() {
    let app = TestApp::api_only().await;
    let res = app
        .http
        .post(format!("{}/jobs", app.url))
        .header("content-type", "application/json")
        .body(
            r#"{"kind": "sleep", "payload": {"duration_ms": 1e1, "steps": 2.0}, "delay_ms": 5.0}"#,
        )
        .send()
        .await
        .unwrap();
    assert_eq!(res.status(), StatusCode::ACCEPTED);
    let job: Value = res.json().await.unwrap();
    assert_eq!(job["payload"], json!({"duration_ms": 10, "steps": 2}));
    assert!(job["payload"]["steps"].is_u64(), "{job}");
    let (status, body) = app
        .post_path(
            "/jobs/redrive",
            Some(json!({"status": "failed", "limit": 3.0})),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, body) = app
        .post_path(
            "/jobs/redrive",
            Some(json!({"status": "failed", "limit": 3.5})),
        )
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    app.stop().await;
}

#[tokio::test]
async fn the_committed_openapi_document_is_the_served_one() {
    let app = TestApp::api_only().await;
    let (_, served) = app.get("/openapi.json").await;
    let committed: Value = serde_json::from_str(include_str!("../../../api/openapi.json")).unwrap();
    assert!(
        served == committed,
        "api/openapi.json is stale: run `make contract`"
    );
    let links = &served["paths"]["/jobs"]["post"]["responses"]["202"]["links"];
    for (link, operation) in [
        ("GetJob", "getJob"),
        ("CancelJob", "cancelJob"),
        ("RedriveJob", "redriveJob"),
    ] {
        assert_eq!(links[link]["operationId"], operation);
        assert_eq!(links[link]["parameters"]["id"], "$response.body#/id");
    }
    let operations: Vec<&str> = served["paths"]
        .as_object()
        .unwrap()
        .values()
        .flat_map(|p| p.as_object().unwrap().values())
        .filter_map(|op| op["operationId"].as_str())
        .collect();
    assert!(operations.contains(&"getJob") && operations.contains(&"cancelJob"));
    app.stop().await;
}

/// Every queue the topology declares is replicated, as the broker itself says: declared again
/// as a classic queue, each is refused with the type it really has (quorum or stream). A classic
/// queue lives on one node, and would be unavailable (and its messages with it) while that node
/// is down; on RabbitMQ 3.10 and 4.x alike.
#[tokio::test]
async fn the_broker_holds_every_queue_of_the_topology_as_replicated() {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};

    let prefix = format!("tq{}", &uuid::Uuid::new_v4().simple().to_string()[..12]);
    let topology = jobs_contract::Topology::new(&prefix);
    let conn = lapin::Connection::connect(&test_support::services::RABBITMQ, Default::default())
        .await
        .unwrap();
    topology
        .declare(&conn.create_channel().await.unwrap())
        .await
        .unwrap();
    let queues = topology.queues();
    assert!(queues.len() >= 4, "{queues:?}");
    let mut refused = Vec::new();
    for q in &queues {
        let ch = conn.create_channel().await.unwrap();
        // Its own arguments, but for the type: the broker compares them all.
        let mut args = FieldTable::default();
        for (key, value) in &q.args {
            let value = match (*key, value) {
                ("x-queue-type", _) => AMQPValue::LongString(LongString::from("classic")),
                (_, jobs_contract::topology::Arg::Str(s)) => {
                    AMQPValue::LongString(LongString::from(s.clone()))
                }
                (_, jobs_contract::topology::Arg::Int(i)) => AMQPValue::LongLongInt(*i),
            };
            args.insert(ShortString::from(*key), value);
        }
        let answer = ch
            .queue_declare(q.name.clone().into(), QueueDeclareOptions::durable(), args)
            .await;
        refused.push((
            q.name.clone(),
            answer.map(|_| ()).map_err(|e| e.to_string()),
        ));
    }
    let _ = conn.close(200, "done".into()).await;
    test_support::cleanup::remove_topology(&topology).await;
    for (name, answer) in refused {
        let err = answer.expect_err(&format!("{name} was declared as a classic queue"));
        assert!(
            err.contains("PRECONDITION_FAILED")
                && (err.contains("'quorum'") || err.contains("'stream'")),
            "{name}: {err}"
        );
    }
}
