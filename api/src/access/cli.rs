//! `api create-key <name> <role> [<lifetime>]`: the first key of a deployment (after that, an
//! admin makes keys with `POST /keys`). It connects with the api's own `DATABASE_URL`, migrates
//! if needed, and prints the secret on stdout, once; nothing else is printed there, so a script
//! can capture it.

use tokio_util::sync::CancellationToken;

use super::{Role, keys};
use crate::{Config, db, store};

/// What `args` (after the binary's name) ask, if they ask for a key.
pub fn requested(args: &[String]) -> Option<Result<Request, String>> {
    (args.first().map(String::as_str) == Some("create-key")).then(|| parse(&args[1..]))
}

/// A key to make from the command line.
#[derive(Debug, PartialEq)]
pub struct Request {
    name: String,
    role: Role,
    lifetime: Option<std::time::Duration>,
}

const USAGE: &str =
    "usage: api create-key <name> <submitter|viewer|operator|admin> [<lifetime, e.g. 90d>]";

fn parse(args: &[String]) -> Result<Request, String> {
    let [name, role, rest @ ..] = args else {
        return Err(USAGE.into());
    };
    if !keys::valid_name(name) {
        return Err(format!("name {name:?}: 1-64 of A-Z a-z 0-9 . _ -"));
    }
    let role = Role::parse(role).ok_or_else(|| format!("role {role:?}: {USAGE}"))?;
    let lifetime = match rest {
        [] => None,
        [span] => Some(
            shared::config::parse_span(span, false)
                .map_err(|e| format!("lifetime {span:?}: {e}"))?
                .expect("zero is refused"),
        ),
        _ => return Err(USAGE.into()),
    };
    Ok(Request {
        name: name.clone(),
        role,
        lifetime,
    })
}

/// Makes the key and prints its secret.
pub async fn create(config: &Config, req: Request) -> anyhow::Result<()> {
    let db = db::connect(config, &Default::default(), &CancellationToken::new()).await?;
    let secret = keys::generate();
    let (digest, hint) = (keys::digest(&secret), keys::hint(&secret));
    let expires_at = req
        .lifetime
        .map(|d| chrono::Utc::now() + chrono::Duration::from_std(d).expect("a bounded span"));
    let row = store::keys::create(
        &db,
        &store::keys::NewKey {
            name: &req.name,
            role: req.role,
            digest: &digest,
            hint: &hint,
            submit_rate: None,
            max_in_flight: None,
            expires_at,
            created_by: "api create-key",
        },
        None,
    )
    .await?;
    eprintln!(
        "key {} made for {} ({}); its secret follows, shown this once",
        row.id, row.name, row.role
    );
    println!("{secret}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(str::to_owned).collect()
    }

    #[test]
    fn the_command_line_is_read_and_bad_ones_are_refused_with_usage() {
        assert!(requested(&args("healthcheck")).is_none());
        assert_eq!(
            requested(&args("create-key ops admin 90d"))
                .unwrap()
                .unwrap(),
            Request {
                name: "ops".into(),
                role: Role::Admin,
                lifetime: Some(std::time::Duration::from_secs(90 * 86_400)),
            }
        );
        for bad in [
            "create-key",
            "create-key ops",
            "create-key ops root",
            "create-key 'a b' admin",
            "create-key ops admin 0",
            "create-key ops admin 1d extra",
        ] {
            assert!(requested(&args(bad)).unwrap().is_err(), "{bad}");
        }
    }
}
