/** One run's figures for one variant, by metric name. */
export type Sample = Record<string, number>

export interface Summary {
  median: number
  min: number
  max: number
  values: number[]
}

export function summarize(values: number[]): Summary {
  const sorted = values.filter((v) => Number.isFinite(v)).sort((a, b) => a - b)
  const n = sorted.length
  const median = n === 0 ? NaN : n % 2 ? sorted[(n - 1) / 2]! : (sorted[n / 2 - 1]! + sorted[n / 2]!) / 2
  return { median, min: sorted[0] ?? NaN, max: sorted[n - 1] ?? NaN, values }
}

export interface Target {
  /** What is compared, for the targets table. */
  name: string
  /** What the target says, e.g. `>= 0.6x raw Fastify`. */
  text: string
  op: '>=' | '>' | '<=' | '<'
  value: number
  /** Compare the ratio to the baseline, or the median itself. */
  on: 'ratio' | 'median'
}

export interface Row {
  scenario: string
  variant: string
  /** Key of the variant's samples. */
  key: string
  metric: string
  /** The metric as printed, unit included. */
  label: string
  decimals: number
  /** Key of the baseline variant (same metric), measured in the same runs. */
  baseline?: string
  isBaseline?: boolean
  target?: Target
}

export interface RowResult extends Row {
  summary: Summary
  ratio?: number
  /** Per-run ratios (run i of the variant over run i of its baseline). */
  runRatios?: number[]
  met?: boolean
}

export function evaluate(rows: Row[], samples: Record<string, Sample[]>): RowResult[] {
  const values = (key: string, metric: string) => (samples[key] ?? []).map((s) => s[metric] ?? NaN)
  const out: RowResult[] = []
  for (const row of rows) {
    const mine = values(row.key, row.metric)
    if (mine.length === 0) continue
    const result: RowResult = { ...row, summary: summarize(mine) }
    if (row.baseline) {
      const base = values(row.baseline, row.metric)
      const baseMedian = summarize(base).median
      result.ratio = result.summary.median / baseMedian
      result.runRatios = mine.map((v, i) => v / (base[i] ?? NaN))
    }
    if (row.target) {
      const figure = row.target.on === 'ratio' ? result.ratio : result.summary.median
      if (figure !== undefined && Number.isFinite(figure)) {
        const { op, value } = row.target
        result.met =
          op === '>=' ? figure >= value : op === '>' ? figure > value : op === '<=' ? figure <= value : figure < value
      }
    }
    out.push(result)
  }
  return out
}

const fmt = (v: number, decimals: number) =>
  Number.isFinite(v)
    ? v.toLocaleString('en-US', { minimumFractionDigits: decimals, maximumFractionDigits: decimals })
    : 'n/a'

const fmtRatio = (v: number) => (Number.isFinite(v) ? `${fmt(v, 2)}x` : 'n/a')

export function markdownTable(results: RowResult[]): string {
  const lines = [
    '| Scenario | Variant | Metric | Median | Min | Max | vs baseline | Target | Met |',
    '| --- | --- | --- | ---: | ---: | ---: | ---: | --- | --- |',
  ]
  let lastScenario = ''
  for (const r of results) {
    const scenario = r.scenario === lastScenario ? '' : r.scenario
    lastScenario = r.scenario
    const ratio = r.isBaseline ? 'baseline' : r.ratio !== undefined ? fmtRatio(r.ratio) : ''
    const met = r.met === undefined ? (r.target ? 'n/a' : '') : r.met ? '**met**' : '**not met**'
    lines.push(
      `| ${scenario} | ${r.variant} | ${r.label} | ${fmt(r.summary.median, r.decimals)} | ${fmt(r.summary.min, r.decimals)} | ${fmt(r.summary.max, r.decimals)} | ${ratio} | ${r.target?.text ?? ''} | ${met} |`,
    )
  }
  return lines.join('\n')
}

export function targetsTable(results: RowResult[]): string {
  const lines = ['| Target | Figure (median) | Met |', '| --- | ---: | --- |']
  for (const r of results) {
    if (!r.target) continue
    const figure =
      r.target.on === 'ratio'
        ? `${fmtRatio(r.ratio ?? NaN)} (${fmt(r.summary.median, r.decimals)} ${r.label})`
        : `${fmt(r.summary.median, r.decimals)} ${r.label}`
    const met = r.met === undefined ? 'n/a' : r.met ? '**met**' : '**not met**'
    lines.push(`| ${r.target.name}: ${r.target.text} | ${figure} | ${met} |`)
  }
  return lines.join('\n')
}
