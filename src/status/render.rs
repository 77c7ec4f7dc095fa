//! Human tables for the CLI (`--json` prints the socket's result instead).

use serde_json::Value;

use crate::event::rfc3339_ms;
use crate::text::printable;

/// Left-aligned columns, two spaces apart.
pub fn table(header: &[&str], rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = header.iter().map(|h| h.len()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            if let Some(w) = widths.get_mut(i) {
                *w = (*w).max(cell.chars().count());
            }
        }
    }
    let line = |cells: Vec<String>| {
        let mut out = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
                out.push_str(c);
            } else {
                out.push_str(&format!("{c:<w$}  ", w = widths[i]));
            }
        }
        out.trim_end().to_string() + "\n"
    };
    let mut out = line(header.iter().map(|h| h.to_string()).collect());
    for row in rows {
        out.push_str(&line(row.clone()));
    }
    out
}

fn s(v: &Value) -> String {
    match v {
        Value::Null => "-".into(),
        Value::String(s) => printable(s).into_owned(),
        other => other.to_string(),
    }
}

/// The elements of a JSON array (none for anything else).
fn items(v: &Value) -> &[Value] {
    v.as_array().map(|a| a.as_slice()).unwrap_or_default()
}

fn bytes(n: u64) -> String {
    bytesize::ByteSize::b(n).display().iec().to_string()
}

fn age(secs: &Value) -> String {
    match secs.as_u64() {
        None => "-".into(),
        Some(n) => humantime::format_duration(std::time::Duration::from_secs(n)).to_string(),
    }
}

fn time(ms: &Value) -> String {
    ms.as_i64().map(rfc3339_ms).unwrap_or_else(|| "-".into())
}

fn short(text: &Value, n: usize) -> String {
    let t = s(text).replace('\n', " ");
    if t.chars().count() > n { t.chars().take(n).collect::<String>() + "…" } else { t }
}

pub fn status(v: &Value) -> String {
    let m = &v["mqtt"];
    let st = &v["storage"];
    let mut out = format!(
        "fleethook {}  device {}  up {}  clock {}\n",
        s(&v["version"]),
        s(&v["device_id"]),
        age(&v["uptime_s"]),
        s(&v["clock"])
    );
    let conn = if m["connected"].as_bool() == Some(true) {
        "connected".to_string()
    } else {
        format!("DISCONNECTED ({})", s(&m["last_error"]))
    };
    let dropped = match m["broker_dropped"].as_u64() {
        Some(n) if n > 0 => format!("  broker dropped {n} (its queue was full; see docs/oem.md)"),
        _ => String::new(),
    };
    out.push_str(&format!("mqtt     {conn}  {}{dropped}\n", s(&m["url"])));
    for r in m["refused"].as_array().into_iter().flatten() {
        out.push_str(&format!("         REFUSED {}: {}\n", s(&r["filter"]), s(&r["answer"])));
    }
    for u in m["unavailable"].as_array().into_iter().flatten() {
        out.push_str(&format!("         not available: {}\n", s(u)));
    }
    out.push_str(&format!(
        "storage  {} of {}  events {}  quarantined {}  duplicates {}  {}\n",
        bytes(st["bytes"].as_u64().unwrap_or(0)),
        bytes(st["max_bytes"].as_u64().unwrap_or(0)),
        s(&st["events"]),
        s(&st["quarantined"]),
        s(&st["duplicates"]),
        s(&st["path"]),
    ));
    let rate = match (st["written_per_day"].as_u64(), st["written_per_day_over_s"].as_u64()) {
        (Some(per_day), Some(window)) if window >= 3000 => {
            format!("{} a day at the last hour's rate", bytes(per_day))
        }
        (Some(per_day), Some(window)) => {
            format!("{} a day at the rate of the last {} min", bytes(per_day), window / 60)
        }
        (Some(per_day), None) => format!("{} a day on average since start", bytes(per_day)),
        (None, _) => "a daily rate after 10 min of uptime".to_string(),
    };
    out.push_str(&format!(
        "flash    {} written since start, {rate}\n\n",
        bytes(st["written_bytes"].as_u64().unwrap_or(0))
    ));
    let rows: Vec<Vec<String>> = items(&v["subscriptions"])
        .iter()
        .map(|sub| {
            vec![
                s(&sub["name"]),
                s(&sub["state"]),
                s(&sub["pending"]),
                s(&sub["in_flight"]),
                s(&sub["delivered"]),
                s(&sub["failed"]),
                s(&sub["expired"]),
                s(&sub["evicted"]),
                s(&sub["superseded"]),
                age(&sub["oldest_pending_age_s"]),
                s(&sub["last_status"]),
                short(&sub["last_error"], 60),
            ]
        })
        .collect();
    out.push_str(&table(
        &[
            "SUBSCRIPTION",
            "STATE",
            "PENDING",
            "IN FLIGHT",
            "DELIVERED",
            "FAILED",
            "EXPIRED",
            "EVICTED",
            "SUPERSEDED",
            "OLDEST",
            "LAST",
            "LAST ERROR",
        ],
        &rows,
    ));
    out.push_str(&bandwidth(v));
    out
}

/// The link's profile, and what each subscription sent against its budget and rate.
fn bandwidth(v: &Value) -> String {
    let link = &v["link"];
    let rate = |r: &Value| r.as_u64().map_or_else(|| "-".to_string(), |r| format!("{}/s", bytes(r)));
    let mut out = format!("\nlink     {}  max {}", s(&link["profile"]), rate(&link["max_rate"]));
    if !link["held"].is_null() {
        out.push_str(&format!("  holding {}", s(&link["held"])));
    }
    out.push('\n');
    let rows: Vec<Vec<String>> = items(&v["subscriptions"])
        .iter()
        .map(|sub| {
            let size = |n: &Value| n.as_u64().map_or_else(|| "-".to_string(), bytes);
            vec![
                s(&sub["name"]),
                size(&sub["sent_bytes_24h"]),
                size(&sub["daily_budget"]),
                size(&sub["budget_left"]),
                rate(&sub["max_rate"]),
                sub["held"].as_str().unwrap_or("-").to_string(),
            ]
        })
        .collect();
    out + &table(&["SUBSCRIPTION", "SENT 24H", "DAILY BUDGET", "LEFT", "MAX RATE", "WAITING"], &rows)
}

pub fn queue(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|d| {
            vec![
                s(&d["delivery_id"]),
                s(&d["subscription"]),
                s(&d["event_type"]),
                s(&d["state"]),
                match d["probes"].as_u64() {
                    Some(p) if p > 0 => format!("{} (+{p} probes)", s(&d["attempts"])),
                    _ => s(&d["attempts"]),
                },
                time(&d["created_ms"]),
                if d["next_attempt_ms"].as_i64().is_some_and(|t| t > 0) {
                    time(&d["next_attempt_ms"])
                } else {
                    "-".into()
                },
                s(&d["waits"]),
                short(&d["last_error"], 80),
            ]
        })
        .collect();
    table(
        &[
            "DELIVERY",
            "SUBSCRIPTION",
            "TYPE",
            "STATE",
            "ATTEMPTS",
            "CREATED",
            "NEXT ATTEMPT",
            "WAITS FOR",
            "LAST ERROR",
        ],
        &rows,
    )
}

pub fn log(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|a| {
            vec![
                time(&a["started_ms"]),
                s(&a["subscription"]),
                s(&a["delivery_id"]),
                s(&a["event_type"]),
                s(&a["attempt"]),
                s(&a["status"]),
                format!("{}ms", s(&a["duration_ms"])),
                s(&a["outcome"]),
                short(&a["error"], 80),
            ]
        })
        .collect();
    table(&["STARTED", "SUBSCRIPTION", "DELIVERY", "TYPE", "ATTEMPT", "STATUS", "TOOK", "OUTCOME", "ERROR"], &rows)
}

pub fn show(v: &Value) -> String {
    if let Some(batch) = v["batch_id"].as_str() {
        return format!(
            "batch {batch}: {} deliveries in its attempts (`fleethook show DELIVERY` for one)\n\n{}",
            items(&v["attempts"]).iter().map(|a| s(&a["delivery_id"])).collect::<std::collections::BTreeSet<_>>().len(),
            log(&v["attempts"])
        );
    }
    let mut out = format!(
        "event {}  {}  device {}  at {}  topic {}\ndata {}\n\n",
        s(&v["event_id"]),
        s(&v["event_type"]),
        s(&v["device_id"]),
        time(&v["created_ms"]),
        s(&v["topic"]),
        v["data"]
    );
    out.push_str(&queue(&v["deliveries"]));
    // Each attempt in full: the whole error and what the endpoint answered.
    for a in items(&v["attempts"]) {
        out.push_str(&format!(
            "\nattempt {} to {} at {}: {} ({}, {} ms)\n",
            s(&a["attempt"]),
            s(&a["subscription"]),
            time(&a["started_ms"]),
            s(&a["outcome"]),
            match a["status"].as_u64() {
                Some(status) => format!("HTTP {status}"),
                None => "no answer".into(),
            },
            s(&a["duration_ms"]),
        ));
        if !a["batch_id"].is_null() {
            out.push_str(&format!("  in batch {}\n", s(&a["batch_id"])));
        }
        if !a["error"].is_null() {
            out.push_str(&format!("  error: {}\n", s(&a["error"])));
        }
        if !a["snippet"].is_null() {
            out.push_str(&format!("  response: {}\n", s(&a["snippet"])));
        }
    }
    out
}

pub fn quarantine(v: &Value) -> String {
    let rows: Vec<Vec<String>> = items(v)
        .iter()
        .map(|q| {
            vec![
                s(&q["seq"]),
                s(&q["received_at"]),
                s(&q["topic"]),
                bytes(q["size"].as_u64().unwrap_or(0)),
                // The last column: whole, so the type topic at its end is not cut off.
                s(&q["reason"]).replace('\n', " "),
            ]
        })
        .collect();
    table(&["N", "RECEIVED", "TOPIC", "SIZE", "REASON"], &rows)
}

/// `quarantine show`: the reason and topic, then the payload as it arrived.
pub fn quarantined(v: &Value) -> String {
    let mut out = format!(
        "quarantined message {}  received {}  topic {}  size {}\nreason: {}\n",
        s(&v["seq"]),
        s(&v["received_at"]),
        s(&v["topic"]),
        bytes(v["size"].as_u64().unwrap_or(0)),
        s(&v["reason"]),
    );
    if v["kept"] != v["size"] {
        out.push_str(&format!("(only its first {} bytes were kept)\n", s(&v["kept"])));
    }
    match (&v["payload"], &v["payload_base64"]) {
        (Value::String(text), _) => out.push_str(&format!("payload:\n{}\n", printable(text))),
        (_, Value::String(b64)) => out.push_str(&format!("payload (not UTF-8, base64):\n{b64}\n")),
        _ => {}
    }
    out
}

/// `quarantine release`: what became of each message.
pub fn released(v: &Value) -> String {
    let mut out = String::new();
    for r in items(&v["results"]) {
        if r["released"] == true {
            let queued = items(&r["delivery_ids"]).len();
            let note = if r["duplicate"] == true { ", a duplicate of a stored event" } else { "" };
            out.push_str(&format!(
                "{}: released as {} {} for {queued} subscription(s){note}\n",
                s(&r["seq"]),
                s(&r["event_type"]),
                s(&r["event_id"])
            ));
        } else {
            out.push_str(&format!("{}: kept: {}\n", s(&r["seq"]), s(&r["reason"])));
        }
    }
    out.push_str(&format!("{} released\n", s(&v["released"])));
    out
}

/// `quarantine purge`: how many went, and which numbers named nothing.
pub fn purged(v: &Value) -> String {
    let mut out = format!("{} quarantined message(s) deleted\n", s(&v["purged"]));
    for seq in items(&v["missing"]) {
        out.push_str(&format!("{}: no quarantined message has this number\n", s(seq)));
    }
    out
}

/// One frame of `top`: the status plus delivery rates since the previous frame.
pub fn top(v: &Value, previous: Option<&Value>, seconds: f64) -> String {
    let mut out = status(v);
    if let Some(prev) = previous {
        out.push('\n');
        let rows: Vec<Vec<String>> = items(&v["subscriptions"])
            .iter()
            .map(|sub| {
                let before = prev["subscriptions"]
                    .as_array()
                    .and_then(|a| a.iter().find(|p| p["name"] == sub["name"]))
                    .and_then(|p| p["delivered"].as_u64())
                    .unwrap_or(0);
                let now = sub["delivered"].as_u64().unwrap_or(0);
                let rate = now.saturating_sub(before) as f64 / seconds.max(0.001);
                vec![s(&sub["name"]), format!("{rate:.1}/s")]
            })
            .collect();
        out.push_str(&table(&["SUBSCRIPTION", "DELIVERED RATE"], &rows));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_align() {
        let t = table(&["A", "LONGER"], &[vec!["xxxx".into(), "y".into()]]);
        assert_eq!(t, "A     LONGER\nxxxx  y\n");
    }
}
