//! `session-proxy bench …`: hands each mode to the bench crate and prints
//! its result.

use super::BenchMode;
use anyhow::Context;
use session_proxy_bench::{self as bench, LoadOptions};
use std::time::Duration;

/// Runs one benchmark mode and prints its result.
pub async fn run_bench(mode: BenchMode) -> anyhow::Result<()> {
    let (result, json) = match mode {
        BenchMode::Report {
            input,
            out,
            plot,
            command,
        } => {
            bench::report::report(&input, &out, &plot, &command)?;
            return Ok(());
        }
        BenchMode::Soak {
            config,
            target,
            clients,
            minutes,
            kill_every,
        } => {
            let binary = std::env::current_exe().context("finding this binary")?;
            let r = bench::soak::soak(
                &binary,
                &config,
                target,
                clients,
                Duration::from_secs_f64(minutes * 60.0),
                Duration::from_secs(kill_every),
            )
            .await?;
            println!(
                "soak: {} ok, {} error responses, {} reconnects, {} backend kills, {} acknowledged writes checked",
                r.ok, r.error_responses, r.reconnects, r.kills, r.acknowledged_writes_checked
            );
            println!("connector RSS (s, KiB): {:?}", r.memory);
            return Ok(());
        }
        BenchMode::Floor { addr } => {
            bench::floor::serve(addr).await?;
            return Ok(());
        }
        BenchMode::Pushes {
            sessions,
            count,
            window,
            json,
        } => {
            let o = bench::pushes::PushOptions {
                sessions,
                count,
                window,
            };
            // Its own threads and runtimes: keep them off this runtime's workers.
            let result = tokio::task::spawn_blocking(move || bench::pushes::pushes(o))
                .await
                .context("the pushes benchmark panicked")??;
            (result, json)
        }
        BenchMode::Rr {
            target,
            clients,
            duration,
            warmup,
            rate,
            route,
            body,
            login,
        } => {
            let mut o = LoadOptions::new(target.target);
            o.transport = target.transport();
            o.clients = clients;
            o.duration = Duration::from_secs_f64(duration);
            o.warmup = Duration::from_secs_f64(warmup);
            o.rate = rate;
            o.body = serde_json::from_str(&body).context("--body is not JSON")?;
            if login {
                let server_type = route.split('.').next().unwrap_or("chat");
                o.setup = vec![(
                    format!("{server_type}.benchHandler.login"),
                    serde_json::json!({ "uid": "bench{i}" }),
                )];
            }
            o.route = route;
            (bench::load(o).await?, target.json)
        }
        BenchMode::Idle {
            target,
            clients,
            pid,
            gate,
            login_route,
            login_body,
        } => {
            let targets = if gate {
                bench::connectors_of_gate(target.target, 64).await?
            } else {
                vec![target.target]
            };
            let login = match login_route {
                Some(route) => Some(bench::Login {
                    route,
                    body: serde_json::from_str(&login_body).context("--login-body is not JSON")?,
                }),
                None => None,
            };
            let r =
                bench::idle(&targets, target.transport(), clients, &pid, login.as_ref()).await?;
            (r, target.json)
        }
        BenchMode::Fanout {
            target,
            clients,
            pushes,
            server_type,
        } => (
            bench::fanout(
                target.target,
                target.transport(),
                clients,
                pushes,
                &server_type,
            )
            .await?,
            target.json,
        ),
    };
    if json {
        println!("{}", serde_json::to_string(&result)?);
    } else {
        println!("{result}");
    }
    Ok(())
}
