import cliProgress from 'cli-progress'
import type { Operation } from '../client/index.js'

// A CommonJS module whose `Format` Node cannot see as a named export.
const { Format, Presets, SingleBar } = cliProgress

/** Shows an operation's progress as it changes: a live bar on a terminal, a line per change elsewhere. */
export interface ProgressView {
  update(op: Operation): void
  stop(): void
}

const label = ({ progress: { step, description } }: Operation) => [step, description].filter(Boolean).join(': ')

/**
 * cli-progress draws the bar, and estimates the time left from the pace of the percentages so far;
 * elapsed is the time since watching began. Off a terminal (a pipe, a log file, CI), each change is
 * one plain line: `<time> <state> <percent>% <step>: <description>`.
 */
export function progressView(stream: NodeJS.WriteStream): ProgressView {
  if (stream.isTTY) {
    const bar = new SingleBar(
      {
        stream,
        format: '{bar} {percentage}% | {state} {label} | {duration_formatted} elapsed | {eta_formatted} left',
        hideCursor: true,
        etaBuffer: 20,
        etaAsynchronousUpdate: true,
        // Before two percentages there is no pace to estimate from: '?' rather than NULL or INF.
        formatTime: (t, options, roundTo) => (Number.isFinite(t) ? Format.TimeFormat(t, options, roundTo) : '?'),
      },
      Presets.shades_classic,
    )
    let started = false
    return {
      update(op) {
        const payload = { state: op.state, label: label(op) }
        if (!started) bar.start(100, op.progress.percent, payload)
        else bar.update(op.progress.percent, payload)
        started = true
      },
      stop: () => bar.stop(),
    }
  }
  let last = ''
  return {
    update(op) {
      const line = `${op.state} ${op.progress.percent}% ${label(op)}`.trimEnd()
      if (line === last) return
      last = line
      stream.write(`${new Date().toISOString()} ${line}\n`)
    },
    stop() {},
  }
}
