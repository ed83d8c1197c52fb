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
            redis_server,
            redis_every,
            redis_down,
            json,
        } => {
            let options = bench::soak::SoakOptions {
                binary: std::env::current_exe().context("finding this binary")?,
                config,
                target,
                clients,
                duration: Duration::from_secs_f64(minutes * 60.0),
                kill_every: Duration::from_secs(kill_every),
                redis: redis_server.map(|binary| bench::soak::RedisFaults {
                    binary,
                    every: Duration::from_secs(redis_every),
                    down: Duration::from_secs(redis_down),
                }),
            };
            let r = bench::soak::soak(options).await?;
            if json {
                println!("{}", bench::soak::to_json(&r));
            } else {
                println!(
                    "soak: {} ok, {} error responses, {} unanswered, {} reconnects, {} backend kills, \
                     {} store kills (recovered in {:?}), {} acknowledged writes checked, {} lost",
                    r.ok,
                    r.error_responses,
                    r.unanswered,
                    r.reconnects,
                    r.kills,
                    r.store_kills,
                    r.store_recovery,
                    r.acknowledged_writes_checked,
                    r.acknowledged_writes_lost
                );
                println!("connector RSS (s, KiB): {:?}", r.memory);
            }
            if r.unanswered > 0 || r.acknowledged_writes_lost > 0 {
                anyhow::bail!(
                    "{} requests unanswered, {} acknowledged writes lost",
                    r.unanswered,
                    r.acknowledged_writes_lost
                );
            }
            return Ok(());
        }
        BenchMode::Ccu {
            target,
            steps,
            rate_per_client,
            hold,
            ramp,
            route,
            body,
            p99_ms,
            sources,
            first_source,
            server_pid,
            cpu_pids,
            json,
        } => {
            let report = bench::ccu::ccu(bench::ccu::CcuOptions {
                target,
                steps,
                rate_per_client,
                hold: Duration::from_secs_f64(hold),
                ramp_per_sec: ramp,
                route,
                body,
                p99_target: Duration::from_secs_f64(p99_ms / 1000.0),
                sources,
                first_source,
                server_pid,
                cpu_pids,
            })
            .await?;
            if json {
                println!("{}", serde_json::to_string(&report)?);
            } else {
                println!(
                    "ccu: {} players within p99 {p99_ms} ms at {rate_per_client} req/s each",
                    report.ccu
                );
            }
            return Ok(());
        }
        BenchMode::Faults {
            seeds,
            minutes,
            players,
            pace_ms,
            scenarios,
            redis_server,
            redis_cli,
            histories,
            json,
            plan,
        } => {
            let o = bench::faults::FaultOptions {
                binary: std::env::current_exe().context("finding this binary")?,
                redis_server,
                redis_cli,
                histories,
                players,
                pace: Duration::from_millis(pace_ms),
                scenarios,
            };
            if plan {
                let all = bench::faults::scenarios(&o)?;
                for seed in seeds {
                    let p = bench::faults::scenario::plan(&all, seed);
                    println!("seed {seed}: {} ({:?})", p.scenario, p.secs);
                    for s in &p.steps {
                        let on = [&s.host, &s.a, &s.b]
                            .into_iter()
                            .flatten()
                            .cloned()
                            .collect::<Vec<_>>();
                        println!(
                            "  {:>6.2} s  {} {}",
                            s.at.as_secs_f64(),
                            s.action,
                            on.join(" ")
                        );
                    }
                }
                return Ok(());
            }
            return faults(o, seeds, minutes, json).await;
        }
        BenchMode::Elastic {
            clients,
            minutes,
            every,
            drain_secs,
            pace_ms,
            redis_server,
            json,
        } => {
            let r = bench::elastic::elastic(bench::elastic::ElasticOptions {
                binary: std::env::current_exe().context("finding this binary")?,
                redis_server,
                clients,
                duration: Duration::from_secs_f64(minutes * 60.0),
                every: Duration::from_secs(every),
                drain: Duration::from_secs(drain_secs),
                pace: Duration::from_millis(pace_ms),
            })
            .await?;
            if json {
                println!("{}", bench::elastic::to_json(&r));
            } else {
                for event in &r.events {
                    println!("{event}");
                }
                println!(
                    "elastic: {} ok, {} error responses, {} unanswered, {} interrupted by a drain; \
                     resumes {} ok, {} failed; acknowledged writes {} checked, {} lost; \
                     reconnect to resumed p50 {} ms, p99 {} ms, max {} ms; SIGTERM to exit {:?} ms, {} bad exits",
                    r.ok,
                    r.error_responses,
                    r.unanswered,
                    r.interrupted,
                    r.resumes_ok,
                    r.resumes_failed,
                    r.writes_checked,
                    r.writes_lost,
                    r.reconnect_ms.0,
                    r.reconnect_ms.1,
                    r.reconnect_ms.2,
                    r.sigterm_to_exit_ms,
                    r.bad_exits,
                );
            }
            if r.unanswered > 0 || r.writes_lost > 0 || r.bad_exits > 0 {
                anyhow::bail!(
                    "{} requests unanswered, {} acknowledged writes lost, {} bad exits",
                    r.unanswered,
                    r.writes_lost,
                    r.bad_exits
                );
            }
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
            hold,
            spread,
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
            let (r, held) = bench::idle_held(
                &targets,
                target.transport(),
                clients,
                &pid,
                login.as_ref(),
                Duration::from_secs_f64(spread),
            )
            .await?;
            if hold > 0 {
                // The report first, then the clients stay a while.
                print_result(&r, target.json)?;
                use std::io::Write;
                std::io::stdout().flush()?;
                tokio::time::sleep(Duration::from_secs(hold)).await;
                drop(held);
                return Ok(());
            }
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
        BenchMode::Store {
            redis,
            writers,
            batch,
            sessions,
            duration,
            json,
        } => {
            let options = bench::store::StoreOptions {
                url: redis,
                writers,
                batch,
                sessions,
                duration: Duration::from_secs(duration),
            };
            (bench::store::store(&options).await?, json)
        }
    };
    print_result(&result, json)
}

fn print_result(result: &bench::BenchResult, json: bool) -> anyhow::Result<()> {
    if json {
        println!("{}", serde_json::to_string(result)?);
    } else {
        println!("{result}");
    }
    Ok(())
}

/// `bench faults`: the given seeds (or 1 to 3), or random ones for
/// `minutes`; fails naming every seed whose run broke a promise.
async fn faults(
    o: bench::faults::FaultOptions,
    seeds: Vec<u64>,
    minutes: Option<f64>,
    json: bool,
) -> anyhow::Result<()> {
    let all = bench::faults::scenarios(&o)?;
    let until = minutes.map(|m| std::time::Instant::now() + Duration::from_secs_f64(m * 60.0));
    let mut queue: std::collections::VecDeque<u64> = match (seeds.is_empty(), until) {
        (false, _) => seeds.into(),
        (true, Some(_)) => std::collections::VecDeque::new(),
        (true, None) => (1..=3).collect(),
    };
    let first = rand::random::<u32>() as u64;
    let mut drawn = 0u64;
    let (mut runs, mut operations, mut failing) = (0usize, 0usize, Vec::new());
    loop {
        let seed = match queue.pop_front() {
            Some(seed) => seed,
            None => match until {
                Some(u) if std::time::Instant::now() < u => {
                    drawn += 1;
                    first + drawn
                }
                _ => break,
            },
        };
        let (o2, all2) = (o.clone(), all.clone());
        let run = tokio::task::spawn_blocking(move || bench::faults::run_seed(&o2, &all2, seed))
            .await
            .context("a run")?;
        runs += 1;
        // A run the harness could not carry out (a node that did not start,
        // a namespace it could not build) fails, named; the others go on.
        let report = match run {
            Ok(report) => report,
            Err(err) => {
                println!("seed {seed:>6}  could not run: {err:#}");
                failing.push(seed);
                continue;
            }
        };
        operations += report.operations;
        if json {
            println!("{}", report.to_json());
        } else {
            println!("{}", report.line());
            for v in &report.violations {
                println!("    {v}");
            }
        }
        if !report.violations.is_empty() {
            failing.push(seed);
        }
    }
    println!(
        "faults: {runs} runs, {operations} operations checked, {} with violations or not run",
        failing.len()
    );
    if !failing.is_empty() {
        anyhow::bail!(
            "the runs of seeds {failing:?} broke a promise or could not run; replay one with `session-proxy bench faults --seed N`"
        );
    }
    Ok(())
}
