"""results dict -> Markdown (benchmarks/results/latest.md)."""

from __future__ import annotations

from typing import Any


def _fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def _table(header: list[str], rows: list[list[Any]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_fmt(c) if not isinstance(c, str) else c for c in row) + " |" for row in rows]
    return [*lines, ""]


def _ratio(seq: dict[str, Any], other: dict[str, Any]) -> str:
    return f"{seq['windows_per_s'] / other['windows_per_s']:.2f}"


def _speed_rows(section: dict[str, Any], with_test: bool) -> list[str]:
    entries = section.get("entries", [])
    gpu = any("peak_gpu_mem_delta_mib" in e for e in entries)
    memory = "peak GPU memory delta MiB" if gpu else "peak RSS delta MiB"
    header = ["cell", "tool", "windows", "wall s", "windows/s", "loop windows/s", "GFLOP/s", memory]
    header.append("seqcast / tool (speed)")
    if gpu:
        header.append("RNN dtype")
    if with_test:
        header += ["test MAE", "test MASE"]
    rows = []
    for e in entries:
        seq = next((x for x in entries if x["tool"] == "seqcast" and x["cell"] == e["cell"]), None)
        row = [
            e["cell"],
            e["tool"],
            e["windows"],
            f"{e['wall_s']:.2f}",
            e["windows_per_s"],
            e.get("loop_windows_per_s"),
            e.get("gflops_per_s"),
            e.get("peak_gpu_mem_delta_mib") if gpu else e["peak_rss_delta_mib"],
            _ratio(seq, e) if seq else "-",
        ]
        if gpu:
            row.append(str(e.get("rnn_dtype") or "-"))
        if with_test:
            row += [f"{e['test']['mae']:.1f}", f"{e['test']['mase']:.3f}"]
        rows.append(row)
    return _table(header, rows)


TOOLS = ("seqcast", "bare", "darts", "neuralforecast")
TOOL_NAMES = {"seqcast": "seqcast", "bare": "bare loop", "darts": "Darts", "neuralforecast": "NeuralForecast"}
SPEED_SECTIONS = (("speed", "reference"), ("speed_large", "large"))


def _summary_rows(results: dict[str, Any]) -> list[str]:
    """Per speed shape and cell: windows/s of every tool and seqcast's ratio to each, with the GPU targets'
    verdicts where the run has them (--device cuda)."""
    verdicts = {(t["shape"], t["cell"], t["tool"]): t for t in results.get("targets", []) if "shape" in t}
    rows = []
    for key, shape_name in SPEED_SECTIONS:
        section = results.get(key)
        if not section or not section.get("entries"):
            continue
        shape = (
            f"{shape_name}: L={section['lookback']}, H={section['horizon']}, {section['layers']}x{section['hidden']}, "
            f"batch {section['batch']}"
        )
        for cell in ("lstm", "gru"):
            by_tool = {e["tool"]: e for e in section["entries"] if e["cell"] == cell}
            if not by_tool:
                continue
            row: list[Any] = [shape, cell]
            row += [by_tool[t]["windows_per_s"] if t in by_tool else "-" for t in TOOLS]
            seq = by_tool.get("seqcast")
            for tool in TOOLS[1:]:
                if seq is None or tool not in by_tool:
                    row.append("-")
                    continue
                text = _ratio(seq, by_tool[tool])
                target = verdicts.get((shape_name, cell, tool))
                if target is not None and target["met"] is not None:
                    text += " met" if target["met"] else " **MISSED**"
                row.append(text)
            rows.append(row)
    header = ["shape", "cell", *[f"{TOOL_NAMES[t]} windows/s" for t in TOOLS]]
    header += [f"seqcast / {TOOL_NAMES[t]}" for t in TOOLS[1:]]
    return _table(header, rows)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    meta = results["meta"]
    gpu = m.get("gpu")
    peak = (
        f"bf16 matmul peak on the GPU in-process {m['matmul_peak_gflops']} GFLOP/s."
        if gpu
        else f"float32 matmul peak in-process {m['matmul_peak_gflops']} GFLOP/s."
    )
    lines = [
        "# seqcast benchmark results",
        "",
        f"Mode: **{meta['mode']}**, started {meta['started']}, {meta.get('total_s', 0):.0f} s in all. "
        f"Load average at start {meta.get('load_average_start')}, at end {meta.get('load_average_end')} "
        f"(above {m.get('usable_cpus')} means other processes shared the cores).",
        "",
        f"Machine: {m['cpu_model']} (family {m.get('cpu_family')}, {m.get('cpu_mhz')} MHz), "
        f"{m['usable_cpus']} usable cores, {m['memory_gib']} GiB, SIMD {', '.join(m['simd'])}; "
        f"torch {m['torch']} ({m['blas']}, oneDNN {m['mkldnn']}), {m['torch_threads']} threads for every entry, "
        f"OMP_WAIT_POLICY={m.get('omp_wait_policy')}; " + peak,
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in m["versions"].items() if v) + ".",
        "",
    ]
    if gpu:
        bf16 = meta.get("bf16", {})
        dtypes = sorted({str(v) for v in bf16.get("rnn_output_dtype", {}).values()})
        lines += [
            f"GPU: **{gpu['name']}** (compute capability {gpu['capability']}, {gpu['multiprocessors']} SMs, "
            f"{gpu['memory_gib']} GiB), driver {gpu.get('driver')}, CUDA {gpu.get('cuda')}, cuDNN {gpu.get('cudnn')}, "
            f"cudnn.benchmark on. bf16 autocast everywhere (Darts and NeuralForecast: Lightning "
            f'precision="bf16-mixed"); RNN output dtypes seen: {", ".join(dtypes) or "-"} '
            f"(all bf16: {'yes' if bf16.get('all_bf16') else 'NO'}). Every clock is read after "
            "torch.cuda.synchronize(); memory is the GPU's (max_memory_allocated delta).",
            "",
        ]
    if meta.get("skipped"):
        lines += ["Skipped: " + "; ".join(f"{k} ({v})" for k, v in meta["skipped"].items()), ""]

    targets = results.get("targets", [])
    if targets:
        lines += ["## Targets", ""]
        lines += _table(
            ["target", "value", "met"],
            [
                [t["name"], str(t["value"]), "not measured" if t["met"] is None else ("met" if t["met"] else "MISSED")]
                for t in targets
            ],
        )
    if gpu or "speed_large" in results:
        summary = _summary_rows(results)
        if len(summary) > 3:  # header, rule, blank: at least one row
            lines += [
                "## Speed summary",
                "",
                "windows/s per tool (best round, whole fit call) and seqcast's over each (above 1: seqcast is faster)"
                + ("; GPU targets: at least 0.9x the bare loop and 3x Darts and NeuralForecast." if gpu else "."),
                "",
            ]
            lines += summary

    ratios = results.get("ratios", {})
    if ratios:
        lines += [
            "## Ratios",
            "",
            "Speed ratios are seqcast windows/s over the other entry's (above 1: seqcast is "
            "faster); memory ratios seqcast's peak RSS delta over the other's; MAE ratios seqcast's test MAE "
            "over the other's (below 1: seqcast is more accurate).",
            "",
        ]
        rows = []
        for key, value in ratios.items():
            if isinstance(value, dict):
                rows += [[key, k, str(v)] for k, v in value.items()]
            else:
                rows.append([key, "", str(value)])
        lines += _table(["section", "ratio", "value"], rows)

    speed = results.get("speed", {})
    if speed.get("entries"):
        lines += [
            "## Speed: hourly temperatures",
            "",
            f"{speed['data']}; lookback {speed['lookback']}, horizon {speed['horizon']}, "
            f"{speed['layers']}x{speed['hidden']}, batch {speed['batch']}, {speed['windows']:,} windows per entry. "
            "Wall = the whole fit call (seqcast's includes its validation pass every epoch; the peers here validate "
            "nothing); loop = the training loop alone (seqcast's own counter, Lightning's first batch to train end). "
            f"Best of {speed.get('rounds', 1)} interleaved rounds. Memory: " + speed.get("memory_method", "") + ".",
            "",
        ]
        lines += _speed_rows(speed, with_test=False)
    elif "error" in speed:
        lines += ["## Speed", "", f"FAILED: {speed['error']}", ""]

    large = results.get("speed_large", {})
    if large.get("entries"):
        lines += [
            "## Speed: larger shape",
            "",
            f"{large['data']}; lookback {large['lookback']}, horizon {large['horizon']}, "
            f"{large['layers']}x{large['hidden']}, batch {large['batch']}, {large['windows']:,} windows per entry. "
            f"Wall and loop as above. Best of {large.get('rounds', 1)} interleaved rounds. Memory: "
            + large.get("memory_method", "")
            + ".",
            "",
        ]
        lines += _speed_rows(large, with_test=False)
    elif "error" in large:
        lines += ["## Speed: larger shape", "", f"FAILED: {large['error']}", ""]

    acc = results.get("accuracy", {})
    if acc.get("entries"):
        lines += [
            "## Accuracy at an equal budget: electricity",
            "",
            f"{acc['data']}; lookback {acc['lookback']}, horizon {acc['horizon']}, {acc['layers']}x{acc['hidden']}, "
            f"batch {acc['batch']}, {acc['epochs']} epochs = {acc['windows']:,} windows each; "
            f"{acc['test_windows']} test windows. MAE in MW, MASE against the daily (48) season.",
            "",
        ]
        lines += _speed_rows(acc, with_test=True)
        lines += _table(
            ["baseline", "test MAE", "test MASE"],
            [[k, f"{v['mae']:.1f}", f"{v['mase']:.3f}"] for k, v in acc["baselines"].items()],
        )

    panel = results.get("accuracy_panel", {})
    if panel.get("variants"):
        from benchmarks.accuracy_panel import markdown_lines as panel_markdown

        lines += ["## Accuracy panel: kinds of series against naive, seasonal naive and AutoETS", ""]
        if panel.get("skipped_series"):
            skipped = panel["skipped_series"]
            lines += [f"Left out: {', '.join(skipped['series'])} ({skipped['why']}).", ""]
        lines += panel_markdown(panel)
    elif "error" in panel:
        lines += ["## Accuracy panel", "", f"FAILED: {panel['error']}", ""]

    tta = results.get("time_to_accuracy", {})
    if tta.get("runs"):
        lines += ["## Time to accuracy: electricity, LSTM", "", tta["rule"], ""]
        if "target_mae" in tta:
            lines += [f"Target MAE {tta['target_mae']:.1f} (best peer: {tta['best_peer']}).", ""]
        rows = []
        for tool, run in tta["runs"].items():
            hit = tta.get("time_to_target_s", {}).get(tool, {})
            reached = (
                f"{hit['seconds']:.1f}"
                if hit.get("reached")
                else (f"not within {hit['lower_bound_s']:.0f}" if hit else "-")
            )
            best = min((p["test_mae"] for p in run.get("curve", [])), default=None)
            rows.append(
                [
                    tool,
                    run["windows"],
                    run["wall_s"],
                    f"{run['final_test']['mae']:.1f}",
                    f"{run['final_test']['mase']:.3f}",
                    "-" if best is None else f"{best:.1f}",
                    reached,
                    str(tta.get("speedup_seqcast_vs_peer", {}).get(tool, "")),
                ]
            )
        lines += _table(
            [
                "tool",
                "windows",
                "train s",
                "final MAE",
                "final MASE",
                "best checkpoint MAE",
                "s to target",
                "tool s / seqcast s",
            ],
            rows,
        )
        lines += [
            f"seqcast: its defaults, `{tta['seqcast_settings']}`; seqcast_last_head: the same with head 'last' "
            "(the last hidden state to all H outputs).",
            "",
        ]
    elif tta.get("skipped"):
        lines += ["## Time to accuracy", "", f"Skipped: {tta['skipped']}", ""]

    scaling = results.get("scaling", {})
    if scaling.get("sets"):
        lines += ["## Many series: cost against the number of series", ""]
        lines += [scaling["shape"] + ". " + scaling["rule"], ""]
        rows = []
        for s in scaling["sets"]:
            for e in s["entries"]:
                rows.append(
                    [
                        f"{s['series']} x {s['steps']}",
                        e["tool"],
                        e["windows"],
                        f"{e['wall_s']:.2f}",
                        e["windows_per_s"],
                        "-" if e.get("setup_s") is None else f"{e['setup_s']:.3f}",
                        e["peak_rss_delta_mib"],
                        s["prepare_s"]
                        if e["tool"] == "seqcast"
                        else (s.get("darts_from_group_dataframe_s", "") if e["tool"] == "darts" else ""),
                    ]
                )
        lines += _table(
            ["set", "tool", "windows", "wall s", "windows/s", "set-up s", "peak RSS delta MiB", "own ingest s"],
            rows,
        )

    store = results.get("store", {})
    if "sqlite" in store:
        lines += ["## Forecast writes", ""]
        lines += [f"{store['rows']:,} rows ({store['shape']}), best of {store['repeats']}.", ""]
        rows = []
        for backend in ("sqlite", "postgresql"):
            b = store.get(backend, {})
            if "skipped" in b:
                rows.append([backend, b["skipped"], "", "", "", "", ""])
                continue
            if "upsert_rows_per_s" not in b:
                continue
            bd = b["breakdown_s"]
            rows.append(
                [
                    backend,
                    b["upsert_rows_per_s"],
                    b["upsert_replace_rows_per_s"],
                    b["bulk_insert_rows_per_s"],
                    str(b["ratio_upsert_vs_bulk"]),
                    f"{bd['forecast_rows_conversion']:.3f} / {bd['upsert_execute_only']:.3f}",
                    f"{bd['fast_rows_conversion']:.3f} / {bd['bulk_execute_only']:.3f}",
                ]
            )
        lines += _table(
            [
                "backend",
                "upsert rows/s (new)",
                "upsert rows/s (replace)",
                "bulk insert rows/s",
                "upsert / bulk",
                "upsert: convert s / execute s",
                "bulk: convert s / execute s",
            ],
            rows,
        )

    win = results.get("windowing", {})
    if "peak_rss_delta_mib" in win:
        lines += [
            "## Windowing memory",
            "",
            f"prepare_windows on {win['series']:,} x {win['steps_per_series']:,} (lookback {win['lookback']}, "
            f"horizon {win['horizon']}, {win['windows']:,} windows) in {win['prepare_windows_s']} s: peak RSS delta "
            f"{win['peak_rss_delta_mib']} MiB = **{win['ratio_peak_vs_raw']}x** the raw values "
            f"({win['raw_values_mib']} MiB as float64; the input frame is {win['input_frame_mib']} MiB); "
            f"{win['kept_after_mib']} MiB kept in the result.",
            "",
        ]
        lines += _table(["step", "own peak MiB"], [[k, v] for k, v in win["step_peaks_mib"].items()])

    prof = results.get("profile", {})
    if "seqcast_fit_forecaster" in prof:
        lines += ["## Profile: one epoch, per training step", "", prof["data"] + ". " + prof["note"] + ".", ""]
        seq, bare = prof["seqcast_fit_forecaster"], prof["bare_loop"]
        lines += _table(
            ["", "wall ms/step", "inside ops ms/step", "outside ops ms/step", "inside fraction"],
            [
                [
                    "seqcast fit_forecaster",
                    seq["wall_ms_per_step"],
                    seq["inside_ops_ms_per_step"],
                    seq["outside_ops_ms_per_step"],
                    seq["inside_ops_fraction"],
                ],
                [
                    "bare loop",
                    bare["wall_ms_per_step"],
                    bare["inside_ops_ms_per_step"],
                    bare["outside_ops_ms_per_step"],
                    bare["inside_ops_fraction"],
                ],
            ],
        )
        groups = sorted(set(seq["groups_ms_per_step"]) | set(bare["groups_ms_per_step"]))
        lines += _table(
            ["op group", "seqcast ms/step", "bare ms/step"],
            [[g, seq["groups_ms_per_step"].get(g, 0.0), bare["groups_ms_per_step"].get(g, 0.0)] for g in groups],
        )
        lines += _table(["seqcast top ops", "ms/step"], [[k, v] for k, v in seq["top_ops_ms_per_step"].items()])

    demo = results.get("demo", {})
    if demo.get("first_run"):
        from benchmarks.demo_timing import markdown as demo_markdown

        lines += ["## `seqcast demo`, stage by stage", "", *demo_markdown(demo), ""]

    errors = meta.get("errors")
    if errors:
        lines += ["## Errors", ""] + [f"- {name}: see latest.json" for name in errors] + [""]
    return "\n".join(lines)
