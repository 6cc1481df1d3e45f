// Charts of the dashboard (uPlot). Each <div class="chart" data-chart="KIND" data-source="ID"> reads its
// series from the JSON in <script type="application/json" id="ID">.
(function () {
  "use strict";
  const css = getComputedStyle(document.documentElement);
  const color = (name) => css.getPropertyValue("--" + name).trim() || "#888";
  const GROUPS = ["general", "fewshot", "adapter", "fallback", "shadow"];

  function days(list) { return list.map((d) => Date.parse(d + "T00:00:00Z") / 1000); }
  function width(el) { return Math.max(280, el.clientWidth || 400); }

  function callsChart(el, data) {
    const series = [{}], values = [days(data.days)];
    for (const g of GROUPS) {
      if (!data.calls[g] || !data.calls[g].some((v) => v > 0)) continue;
      series.push({ label: g, stroke: color(g), width: 2 });
      values.push(data.calls[g]);
    }
    return new uPlot({ width: width(el), height: 180, series: series, axes: [{}, { label: "calls/day" }] }, values, el);
  }

  function moneyChart(el, data) {
    const values = [days(data.days), data.spend, data.savings];
    const series = [{}, { label: "spend $", stroke: color("fallback"), width: 2 },
      { label: "savings $", stroke: color("adapter"), width: 2 }];
    return new uPlot({ width: width(el), height: 160, series: series, axes: [{}, { label: "USD/day" }] }, values, el);
  }

  function lossChart(el, data) {
    // Train and validation losses share the step axis; validation points sit at their own steps.
    const steps = Array.from(new Set([...data.train_step, ...data.eval_step])).sort((a, b) => a - b);
    const at = (xs, ys) => { const m = new Map(xs.map((x, i) => [x, ys[i]])); return steps.map((s) => m.has(s) ? m.get(s) : null); };
    const values = [steps, at(data.train_step, data.train_loss), at(data.eval_step, data.eval_loss)];
    const series = [{ label: "step" }, { label: "train loss", stroke: color("accent"), width: 2, spanGaps: true },
      { label: "validation loss", stroke: color("fallback"), width: 2, spanGaps: true, points: { show: true, size: 6 } }];
    return new uPlot({ width: width(el), height: 240, scales: { x: { time: false } }, series: series }, values, el);
  }

  const KINDS = { calls: callsChart, money: moneyChart, loss: lossChart };

  function draw(root) {
    root.querySelectorAll("[data-chart]").forEach((el) => {
      const source = document.getElementById(el.dataset.source);
      if (!source || !window.uPlot) return;
      const all = JSON.parse(source.textContent);
      const data = el.dataset.key ? all[el.dataset.key] : all;
      el.textContent = "";
      KINDS[el.dataset.chart](el, data);
    });
  }

  document.addEventListener("DOMContentLoaded", () => draw(document));
  document.addEventListener("htmx:afterSettle", (e) => draw(e.target));
})();
