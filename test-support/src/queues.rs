//! Looking into a queue directly.

use lapin::Channel;
use lapin::options::BasicGetOptions;

/// Takes every message now in `queue`: (its `x-jobstack-reason` header or "", its body).
pub async fn drain_dead_letters(ch: &Channel, queue: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    while let Some(msg) = ch
        .basic_get(queue.into(), BasicGetOptions { no_ack: true })
        .await
        .expect("basic.get on the test broker")
    {
        let reason = msg
            .delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-jobstack-reason"))
            .and_then(|v| v.as_long_string().map(ToString::to_string))
            .unwrap_or_default();
        out.push((reason, msg.delivery.data.clone()));
    }
    out
}
