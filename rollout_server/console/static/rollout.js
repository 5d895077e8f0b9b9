// The rollout page, live: every few seconds it asks /console/rollouts/<id>/live for the summary,
// the per-window series and the newest verdicts, and redraws the tiles, the charts (uPlot) and
// the verdict table in place. Only textContent is written: nothing from the server becomes HTML.
// After the first answer it asks only for the windows from two before its newest one (the server
// sums the last windows again as late reports arrive) and splices them in.
"use strict";
(function () {
  const root = document.getElementById("rollout");
  if (!root) return;
  const liveUrl = root.dataset.live;
  const EVERY_MS = 5000;
  const COLOURS = { canary: "#cf222e", stable: "#1f6feb" };
  const charts = new Map();
  const MAX_POINTS = 1440;
  let held = null;

  function since() {
    if (!held || held.t.length === 0) return null;
    return held.t[held.t.length - 1] - 2 * held.window_seconds;
  }

  function merge(series) {
    if (!held || series.since === null || series.since === undefined) {
      held = series;
      return held;
    }
    let cut = held.t.findIndex((t) => t >= series.since);
    if (cut === -1) cut = held.t.length;
    const from = Math.max(0, cut + series.t.length - MAX_POINTS);
    held.t = held.t.slice(0, cut).concat(series.t).slice(from);
    ["canary", "stable"].forEach((arm) => {
      Object.keys(series[arm]).forEach((name) => {
        held[arm][name] = (held[arm][name] || []).slice(0, cut).concat(series[arm][name]).slice(from);
      });
    });
    held.window_seconds = series.window_seconds;
    return held;
  }

  function text(id, value) {
    const el = document.getElementById(id);
    if (el && el.textContent !== value) el.textContent = value;
  }

  function scaled(values, unit) {
    return unit === "%" ? values.map((v) => (v === null ? null : 100 * v)) : values;
  }

  function drawCharts(series) {
    if (typeof uPlot === "undefined") return;
    document.querySelectorAll(".chart").forEach((el) => {
      const name = el.dataset.series;
      const unit = el.dataset.unit || "";
      const data = [series.t, scaled(series.canary[name], unit), scaled(series.stable[name], unit)];
      let chart = charts.get(el);
      if (!chart) {
        chart = new uPlot({
          width: Math.max(240, el.clientWidth), height: 180,
          scales: { x: { time: true } },
          series: [{}, { label: "canary", stroke: COLOURS.canary, width: 2, spanGaps: false },
                   { label: "stable", stroke: COLOURS.stable, width: 2, spanGaps: false }],
          axes: [{}, { size: 56 }],
          legend: { live: false },
        }, data, el);
        charts.set(el, chart);
      } else {
        chart.setData(data);
      }
      el.dataset.points = String(series.t.length);
    });
  }

  function drawVerdicts(verdicts) {
    const body = document.querySelector("#verdicts tbody");
    if (!body) return;
    const rows = verdicts.map((v) => {
      const tr = document.createElement("tr");
      tr.className = "outcome-" + v.outcome;
      const cells = [v.window_end.slice(0, 19).replace("T", " "), String(v.stage), v.guard, v.scope, null,
                     v.decision, v.reason];
      cells.forEach((value, i) => {
        const td = document.createElement("td");
        if (i === 4) {
          const badge = document.createElement("span");
          badge.className = "badge outcome-" + v.outcome;
          badge.textContent = v.outcome;
          td.appendChild(badge);
          if (v.dry_run) {
            const dry = document.createElement("span");
            dry.className = "badge dry-run";
            dry.title = "evaluated and shown, never acts";
            dry.textContent = "dry run";
            td.append(" ", dry);
          }
        } else {
          td.textContent = value;
        }
        if (i === 6) td.className = "wrap";
        tr.appendChild(td);
      });
      return tr;
    });
    if (rows.length) body.replaceChildren(...rows);
  }

  function drawSummary(live) {
    const s = live.summary;
    const phase = document.getElementById("phase");
    if (phase) {
      phase.className = "badge phase-" + s.phase;
      text("phase", s.phase.replace("_", " "));
    }
    text("stage", s.stage + " / " + s.stages);
    text("canary-percent", (Math.round(10 * s.canary_percent) / 10) + "%");
    text("arm-devices", live.devices ? live.devices.canary + " / " + live.devices.stable : "—");
    text("reason", s.reason || "");
    const hold = document.getElementById("hold");
    if (hold) {
      hold.hidden = !s.hold_reason;
      text("hold", s.hold_reason ? "Held by its schedule: " + s.hold_reason : "");
    }
    let shown = 0;
    document.querySelectorAll("#actions form").forEach((form) => {
      const button = form.querySelector("button");
      form.hidden = !live.actions.includes(button.dataset.action);
      if (!form.hidden) shown += 1;
    });
    const actions = document.getElementById("actions");
    if (actions) actions.hidden = shown === 0;
    root.dataset.phase = s.phase;
  }

  async function refresh() {
    try {
      const from = since();
      const url = from === null ? liveUrl : liveUrl + "?since=" + encodeURIComponent(String(from));
      const response = await fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" } });
      if (response.status === 401 || response.redirected) { window.location.reload(); return; }
      if (!response.ok) return;
      const live = await response.json();
      drawSummary(live);
      drawCharts(merge(live.series));
      drawVerdicts(live.verdicts);
      root.dataset.refreshed = String(Date.now());
    } catch (err) {
      // offline for a moment: the next tick tries again
    }
  }

  window.addEventListener("resize", () => {
    charts.forEach((chart, el) => chart.setSize({ width: Math.max(240, el.clientWidth), height: 180 }));
  });
  refresh();
  setInterval(() => { if (!document.hidden) refresh(); }, EVERY_MS);
})();
