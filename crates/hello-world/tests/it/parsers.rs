//! Every parser of client input, by property: whatever a client sends, the parser answers
//! (never panics) and accepts exactly what its contract says. These call the very functions
//! the server and the check tool run; `fuzz/` feeds the same functions arbitrary bytes.

use std::time::Duration;

use hello_world::admin::{bearer_token, fault_settings};
use hello_world::api::counter::IdempotencyKeyValue;
use hello_world::api::counter::idempotency_key;
use hello_world::api::diagnostics::{requested_delay, requested_status};
use hello_world::api::hello::prefers_html;
use hello_world::api::kv::{EtagList, Key, Precondition, Preconditions, check_key};
use hello_world::check::{parse_header, parse_target};
use hello_world::config::{byte_size, duration};
use hello_world::observe::request_id;
use hello_world::store::Condition;
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header};
use proptest::prelude::*;

/// Headers holding `values` under `name`, as a client would send them (values a header cannot
/// hold are left out, as hyper would never deliver them).
fn headers(name: &HeaderName, values: &[Vec<u8>]) -> HeaderMap {
    let mut map = HeaderMap::new();
    for value in values {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            map.append(name.clone(), value);
        }
    }
    map
}

/// The `pattern` of a schema the OpenAPI description gives a parameter, as a regex.
fn pattern_of<S: utoipa::PartialSchema>() -> regex::Regex {
    let schema = serde_json::to_value(S::schema()).expect("a schema is JSON");
    let pattern = schema["pattern"]
        .as_str()
        .expect("the schema has a pattern");
    regex::Regex::new(pattern).expect("the pattern compiles")
}

/// `"v"` or `W/"v"` with some spaces around, as clients write entity tags.
fn etag(version: u64, weak: bool, pad: usize) -> String {
    let spaces = " ".repeat(pad);
    let weak = if weak { "W/" } else { "" };
    format!("{spaces}{weak}\"{version}\"{spaces}")
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn durations_read_numbers_as_seconds_and_units_as_written(
        n in 0u64..1_000_000_000,
        text in "\\PC{0,40}",
    ) {
        prop_assert_eq!(duration(&n.to_string()), Ok(Duration::from_secs(n)));
        prop_assert_eq!(duration(&format!(" {n}ms ")), Ok(Duration::from_millis(n)));
        let written = humantime::format_duration(Duration::from_millis(n)).to_string();
        prop_assert_eq!(duration(&written), Ok(Duration::from_millis(n)));
        let _ = duration(&text);
    }

    #[test]
    fn sizes_multiply_by_their_unit_or_say_why_not(
        n in any::<u64>(),
        unit in prop::sample::select(vec![
            ("", 1u64), ("B", 1), ("kB", 1_000), ("KiB", 1 << 10), ("MB", 1_000_000),
            ("MiB", 1 << 20), ("GB", 1_000_000_000), ("gib", 1 << 30),
        ]),
        text in "\\PC{0,40}",
    ) {
        let (suffix, factor) = unit;
        let expected = usize::try_from(n)
            .ok()
            .and_then(|n| n.checked_mul(usize::try_from(factor).expect("small factor")));
        prop_assert_eq!(byte_size(&format!("{n}{suffix}")).ok(), expected);
        let _ = byte_size(&text);
    }

    #[test]
    fn kv_keys_are_exactly_the_bounded_plain_ones(
        plain in "[A-Za-z0-9._:-]{1,256}",
        any_key in "\\PC{0,300}",
    ) {
        prop_assert!(check_key(&plain).is_ok(), "{:?}", plain);
        let expected = (1..=256).contains(&any_key.len())
            && any_key.chars().all(|c| c.is_ascii_alphanumeric() || "._:-".contains(c));
        let checked = check_key(&any_key);
        prop_assert_eq!(checked.is_ok(), expected, "{:?}", any_key);
        if let Err(err) = checked {
            prop_assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn an_idempotency_key_is_one_bounded_visible_token(
        key in "[!-~]{1,128}",
        values in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..200), 0..3),
    ) {
        let name = HeaderName::from_static("idempotency-key");
        let one = headers(&name, &[key.clone().into_bytes()]);
        prop_assert_eq!(idempotency_key(&one).ok().flatten(), Some(key.as_str()));
        let sent = headers(&name, &values);
        match idempotency_key(&sent) {
            Ok(None) => prop_assert!(sent.is_empty()),
            Ok(Some(accepted)) => {
                prop_assert_eq!(sent.len(), 1);
                prop_assert!((1..=128).contains(&accepted.len()));
                prop_assert!(accepted.bytes().all(|b| b.is_ascii_graphic()));
            }
            Err(err) => prop_assert_eq!(err.status(), StatusCode::BAD_REQUEST),
        }
    }

    #[test]
    fn a_request_id_is_kept_when_sane_and_always_sane(
        given in prop::collection::vec(any::<u8>(), 0..200),
    ) {
        let name = HeaderName::from_static("x-request-id");
        let sent = headers(&name, std::slice::from_ref(&given));
        let id = request_id(&sent);
        let bytes = id.as_bytes();
        prop_assert!((1..=128).contains(&bytes.len()));
        prop_assert!(bytes.iter().all(u8::is_ascii_graphic));
        let sane = (1..=128).contains(&given.len()) && given.iter().all(u8::is_ascii_graphic);
        if sane {
            prop_assert_eq!(bytes, &given[..]);
        } else {
            prop_assert_eq!(bytes.len(), 16);
            prop_assert!(bytes.iter().all(u8::is_ascii_hexdigit));
        }
    }

    #[test]
    fn html_goes_to_whoever_ranks_it_at_least_as_high_as_text(
        html_q in 0u16..=1000,
        text_q in 0u16..=1000,
        html_first in any::<bool>(),
        noise in "\\PC{0,80}",
    ) {
        let q = |millis: u16| format!("{}.{:03}", millis / 1000, millis % 1000);
        let html = format!("text/html;q={}", q(html_q));
        let text = format!("text/plain; q={}", q(text_q));
        let accept = if html_first { format!("{html}, {text}") } else { format!("{text},{html}") };
        let value = HeaderValue::from_str(&accept).expect("a header value");
        prop_assert_eq!(prefers_html(Some(&value)), html_q > 0 && html_q >= text_q, "{}", accept);
        let wildcard = HeaderValue::from_static("*/*");
        prop_assert!(!prefers_html(Some(&wildcard)));
        if let Ok(noise) = HeaderValue::from_str(&noise) {
            let _ = prefers_html(Some(&noise));
        }
    }

    #[test]
    fn etag_lists_match_exactly_their_strong_tags(
        tags in prop::collection::vec((any::<u64>(), any::<bool>(), 0usize..3), 1..6),
        current in any::<u64>(),
    ) {
        let list = tags
            .iter()
            .map(|(version, weak, pad)| etag(*version, *weak, *pad))
            .collect::<Vec<_>>()
            .join(",");
        let sent = headers(&header::IF_MATCH, &[list.clone().into_bytes()]);
        let parsed = Precondition::parse(&sent, &header::IF_MATCH)
            .expect("a list of tags is valid")
            .expect("the header was sent");
        let strong = |v: u64| tags.iter().any(|(version, weak, _)| *version == v && !weak);
        prop_assert_eq!(parsed.matches(Some(current)), strong(current), "{}", list);
        for (version, weak, _) in &tags {
            prop_assert_eq!(parsed.matches(Some(*version)), !weak || strong(*version));
        }
        prop_assert!(!parsed.matches(None));
    }

    #[test]
    fn preconditions_either_parse_or_refuse_with_400_and_agree_with_their_store_condition(
        if_match in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..40), 0..2),
        if_none_match in prop::collection::vec("[ \"W/*,0-9a]{0,20}", 0..2),
        current in prop::option::of(0u64..20),
    ) {
        let mut sent = headers(&header::IF_MATCH, &if_match);
        let none: Vec<Vec<u8>> = if_none_match.into_iter().map(String::into_bytes).collect();
        for (name, value) in headers(&header::IF_NONE_MATCH, &none) {
            sent.append(name.expect("a named header"), value);
        }
        match Preconditions::parse(&sent) {
            Err(err) => prop_assert_eq!(err.status(), StatusCode::BAD_REQUEST),
            Ok(preconditions) => {
                let pinned = preconditions.pin(current);
                if let Err(err) = &pinned {
                    prop_assert_eq!(err.status(), StatusCode::PRECONDITION_FAILED);
                }
                // Where one store condition says the same, it holds exactly when the pinned
                // evaluation does.
                if let Some(condition) = preconditions.direct() {
                    let holds = match condition {
                        Condition::Always => true,
                        Condition::IfVersion(version) => current == Some(version),
                        Condition::IfExists => current.is_some(),
                        Condition::IfAbsent => current.is_none(),
                    };
                    prop_assert_eq!(holds, pinned.is_ok(), "{:?} at {:?}", condition, current);
                }
            }
        }
    }

    #[test]
    fn a_bearer_token_is_the_word_after_the_scheme_in_any_case(
        token in "[!-~]{1,100}",
        scheme in "[bB][eE][aA][rR][eE][rR]",
        other in "[A-Za-z]{1,10}",
        value in prop::collection::vec(any::<u8>(), 0..120),
    ) {
        let credential = format!("{scheme} {token}");
        prop_assert_eq!(bearer_token(credential.as_bytes()), Some(token.as_bytes()));
        let other_scheme = format!("{other} {token}");
        if !other.eq_ignore_ascii_case("bearer") {
            prop_assert_eq!(bearer_token(other_scheme.as_bytes()), None);
        }
        if let Some(found) = bearer_token(&value) {
            prop_assert!(!found.is_empty() && found.iter().all(u8::is_ascii_graphic));
        }
    }

    #[test]
    fn status_and_delay_routes_accept_only_their_ranges(
        code in any::<u32>(),
        millis in 0u64..120_000,
        text in "\\PC{0,20}",
    ) {
        let status = requested_status(&code.to_string());
        prop_assert_eq!(status.is_ok(), (200..=599).contains(&code), "{}", code);
        if let Ok(status) = status {
            prop_assert_eq!(u32::from(status.as_u16()), code);
        }
        let max = Duration::from_secs(60);
        let delay = requested_delay(&format!("{millis}ms"), max);
        prop_assert_eq!(delay.ok(), (millis <= 60_000).then(|| Duration::from_millis(millis)));
        for err in [requested_status(&text).err(), requested_delay(&text, max).err()]
            .into_iter()
            .flatten()
        {
            prop_assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn fault_settings_take_a_rate_and_a_bounded_latency(
        rate in -1.0f64..2.0,
        millis in 0u64..60_000,
        body in prop::collection::vec(any::<u8>(), 0..100),
    ) {
        let json = format!(r#"{{"error_rate": {rate}, "latency": "{millis}ms"}}"#);
        let valid = (0.0..=1.0).contains(&rate) && millis <= 30_000;
        match fault_settings(json.as_bytes()) {
            // JSON numbers read back within an ulp or so (serde_json's fast float parsing).
            Ok((read, latency)) => {
                prop_assert!(valid, "{}", json);
                prop_assert!((read - rate).abs() < 1e-12, "{} read as {}", rate, read);
                prop_assert_eq!(latency, Duration::from_millis(millis));
            }
            Err(err) => {
                prop_assert!(!valid, "{}: {:?}", json, err);
                prop_assert_eq!(err.status(), StatusCode::BAD_REQUEST);
            }
        }
        if let Err(err) = fault_settings(&body) {
            prop_assert_eq!(err.status(), StatusCode::BAD_REQUEST);
        }
    }

    #[test]
    fn a_check_url_keeps_its_host_port_and_path(
        host in "[a-z][a-z0-9-]{0,20}(\\.[a-z]{2,5})?",
        port in prop::option::of(1u16..),
        path in "(/[a-zA-Z0-9._~-]{0,10}){0,4}(\\?[a-z]=[0-9]{1,3})?",
        scheme in prop::bool::ANY,
        text in "\\PC{0,60}",
    ) {
        let authority = match port {
            Some(port) => format!("{host}:{port}"),
            None => host.clone(),
        };
        let url = format!("{}{authority}{path}", if scheme { "http://" } else { "" });
        let target = parse_target(&url).expect("a plain http URL");
        prop_assert_eq!(&target.host, &host);
        prop_assert_eq!(target.port, port.unwrap_or(80));
        let expected_path = if path.is_empty() || path.starts_with('?') {
            format!("/{path}")
        } else {
            path.clone()
        };
        prop_assert_eq!(target.path.to_string(), expected_path);
        prop_assert_eq!(target.authority.to_str().expect("ASCII"), authority.as_str());
        let secure = format!("https://{authority}{path}");
        let with_credentials = format!("http://user:pw@{authority}{path}");
        prop_assert!(parse_target(&secure).is_err());
        prop_assert!(parse_target(&with_credentials).is_err());
        if let Ok(target) = parse_target(&text) {
            prop_assert!(target.port != 0 && !target.host.is_empty());
        }
    }

    #[test]
    fn a_check_header_argument_is_a_name_a_colon_and_a_value(
        name in "[A-Za-z0-9!#$%&'*+.^_`|~-]{1,30}",
        value in "[!-~]([ !-~]{0,40}[!-~])?",
        pad in 0usize..3,
        line in "\\PC{0,60}",
    ) {
        let spaces = " ".repeat(pad);
        let (parsed_name, parsed_value) = parse_header(&format!("{name}:{spaces}{value}{spaces}"))
            .expect("a valid header line");
        prop_assert_eq!(parsed_name.as_str(), name.to_ascii_lowercase());
        prop_assert_eq!(parsed_value.to_str().expect("ASCII"), value.as_str());
        prop_assert!(parse_header(&name).is_err() || name.contains(':'));
        let _ = parse_header(&line);
    }

    #[test]
    fn the_openapi_patterns_accept_exactly_what_the_parsers_accept(
        etags in "[ \t\"W/*,0-9a#!~-]{0,24}",
        key in "[A-Za-z0-9._:/ %-]{0,300}",
        idempotency in "[\t -~]{0,140}",
    ) {
        let etag_list = pattern_of::<EtagList>();
        let sent = headers(&header::IF_MATCH, &[etags.clone().into_bytes()]);
        prop_assert_eq!(
            etag_list.is_match(&etags),
            Precondition::parse(&sent, &header::IF_MATCH).is_ok(),
            "If-Match: {:?}", etags
        );
        let keys = pattern_of::<Key>();
        let in_bounds = (1..=hello_world::api::kv::MAX_KEY_LEN).contains(&key.len());
        prop_assert_eq!(keys.is_match(&key) && in_bounds, check_key(&key).is_ok(), "key {:?}", key);
        let idempotency_keys = pattern_of::<IdempotencyKeyValue>();
        let in_bounds = (1..=hello_world::api::counter::MAX_IDEMPOTENCY_KEY).contains(&idempotency.len());
        let sent = headers(&HeaderName::from_static("idempotency-key"), &[idempotency.clone().into_bytes()]);
        prop_assert_eq!(
            idempotency_keys.is_match(&idempotency) && in_bounds,
            idempotency_key(&sent).is_ok(),
            "Idempotency-Key: {:?}", idempotency
        );
    }
}
