import { readFile, writeFile } from 'node:fs/promises'
import { createRequire } from 'node:module'
import { text } from 'node:stream/consumers'
import { Command, CommanderError, InvalidArgumentError, Option } from 'commander'
import Table from 'cli-table3'
import {
  createClient,
  LongrunClientError,
  OperationCanceledError,
  OperationFailedError,
  WaitTimeoutError,
  type Client,
  type ListPage,
  type Operation,
  type Where,
} from '../client/index.js'
import { toMs, type Duration } from '../core/duration.js'
import { progressView } from './progress.js'

const VERSION = (createRequire(import.meta.url)('../../package.json') as { version: string }).version

/** What the process exits with (docs/cli.md). */
export const EXIT = {
  /** The command worked; for `submit --wait`, `watch` and `result`: the operation succeeded. */
  ok: 0,
  failed: 1,
  canceled: 2,
  /** Bad arguments, an unreachable server, or a request the server refused. */
  error: 3,
  /** `--timeout` passed before the operation ended, or `result` of an operation not done yet. */
  notDone: 4,
} as const

interface Globals {
  server: string
  operationsPath: string
  token?: string
  sessionKey?: string
  sessionHeader: string
  header: string[]
  json?: boolean
}

/** A failure of the command itself, reported on stderr with its exit code. */
class CliError extends Error {
  constructor(
    message: string,
    readonly exitCode: number = EXIT.error,
  ) {
    super(message)
  }
}

const collect = (value: string, previous: string[] = []) => [...previous, value]

const duration = (value: string) => {
  try {
    return toMs('timeout', value as Duration)
  } catch {
    throw new InvalidArgumentError('a duration such as 30s, 5m or 1500 (milliseconds)')
  }
}

const positiveInteger = (value: string) => {
  if (!/^\d+$/.test(value) || Number(value) < 1) throw new InvalidArgumentError('a positive integer')
  return Number(value)
}

/** `field op value`: the value is JSON when it parses (`5`, `true`, `null`, `"5"`), else the text. */
function parseWhere(expressions: string[]): Where {
  const where: Where = {}
  for (const expression of expressions) {
    const match = /^\s*(\S+)\s+(\S+)\s+(.*?)\s*$/.exec(expression)
    if (!match) throw new CliError(`--where '${expression}': expected 'field op value', e.g. 'state eq failed'`)
    const [, field, op, raw] = match as unknown as [string, string, Where[string]['op'], string]
    let value: Where[string]['value'] = raw
    try {
      const parsed: unknown = JSON.parse(raw)
      if (parsed === null || ['string', 'number', 'boolean'].includes(typeof parsed)) value = parsed as typeof value
    } catch {
      // Not JSON: the text itself, e.g. a time or a LIKE pattern.
    }
    if (where[field] !== undefined) throw new CliError(`--where: '${field}' is given twice`)
    where[field] = { op, value }
  }
  return where
}

async function readData(data: string | undefined): Promise<unknown> {
  if (data === undefined) return {}
  const source = data === '@-' ? await text(process.stdin) : data.startsWith('@') ? await readFileOf(data) : data
  try {
    return JSON.parse(source)
  } catch {
    throw new CliError(`--data is not JSON: give '{...}', @file.json or @- for standard input`)
  }
}

async function readFileOf(data: string): Promise<string> {
  try {
    return await readFile(data.slice(1), 'utf8')
  } catch (err) {
    throw new CliError(`--data ${data}: ${(err as Error).message}`)
  }
}

function clientOf(globals: Globals): Client<Record<string, never>> {
  const headers = new Headers()
  for (const line of globals.header) {
    const colon = line.indexOf(':')
    if (colon < 1) throw new CliError(`--header '${line}': expected 'Name: value'`)
    headers.append(line.slice(0, colon).trim(), line.slice(colon + 1).trim())
  }
  if (globals.token) headers.set('authorization', `Bearer ${globals.token}`)
  if (globals.sessionKey) headers.set(globals.sessionHeader, globals.sessionKey)
  let baseUrl: URL
  try {
    baseUrl = new URL(globals.server)
  } catch {
    throw new CliError(`--server '${globals.server}' is not a URL, e.g. http://127.0.0.1:3000`)
  }
  return createClient({ baseUrl: baseUrl.href, operationsPath: globals.operationsPath, headers: () => headers })
}

const print = (value: unknown) => process.stdout.write(`${JSON.stringify(value, null, 2)}\n`)

const orDash = (time: string | null) => time ?? '-'

function summary(op: Operation): string {
  const { percent, step, description } = op.progress
  const progress = [`${percent}%`, step, description].filter(Boolean).join(' ')
  const rows: [string, unknown][] = [
    ['id', op.id],
    ['name', op.name],
    ['state', `${op.state}${op.done ? '' : ` (${progress})`}`],
    ['attempt', `${op.attempt} of ${op.maxAttempts}`],
    ['owner', op.owner ?? '(anonymous)'],
    ['created', orDash(op.createdAt)],
    ['started', orDash(op.startedAt)],
    ['completed', orDash(op.completedAt)],
  ]
  if (op.error) rows.push(['error', `${op.error.code}: ${op.error.message}`])
  if (op.state === 'succeeded') rows.push(['result', JSON.stringify(op.result)])
  return rows.map(([name, value]) => `${name.padEnd(10)}${String(value)}`).join('\n')
}

function table(page: ListPage): string {
  const rows = new Table({ head: ['id', 'name', 'state', 'progress', 'created'], style: { head: [], border: [] } })
  for (const op of page.items) rows.push([op.id, op.name, op.state, `${op.progress.percent}%`, op.createdAt])
  const more = page.nextCursor ? `\nmore: --cursor ${page.nextCursor}` : ''
  return `${rows.toString()}${more}`
}

/** The exit code of a finished operation. */
const outcomeCode = (op: Operation) =>
  op.state === 'succeeded' ? EXIT.ok : op.state === 'canceled' ? EXIT.canceled : EXIT.failed

/**
 * Follows the operation to its end on the cheapest channel the server offers (the client's wait),
 * showing each progress on stderr (stdout stays the answer, for pipes), then prints the outcome.
 */
async function follow(
  client: Client<Record<string, never>>,
  id: string,
  globals: Globals,
  options: { timeout?: number; progress: boolean },
): Promise<number> {
  const handle = client.operation(id)
  const view = options.progress && !globals.json ? progressView(process.stderr) : undefined
  try {
    await handle.wait({
      ...(options.timeout !== undefined ? { timeout: options.timeout } : {}),
      ...(view ? { onProgress: (_progress, op) => view.update(op) } : {}),
    })
  } catch (err) {
    if (!(err instanceof LongrunClientError) || err instanceof WaitTimeoutError) {
      view?.stop()
      if (err instanceof WaitTimeoutError) {
        throw new CliError(`still not done after the --timeout; it goes on: longrun watch ${id}`, EXIT.notDone)
      }
      throw err
    }
    if (!(err instanceof OperationFailedError || err instanceof OperationCanceledError)) {
      view?.stop()
      throw err
    }
  }
  const op = await handle.get()
  if (view) {
    view.update(op)
    view.stop()
  }
  if (globals.json) print(op)
  else if (op.state === 'succeeded') print(op.result)
  else process.stderr.write(`${op.state}: ${op.error ? `${op.error.code}: ${op.error.message}` : ''}\n`)
  return outcomeCode(op)
}

function program(state: { code: number | undefined }): Command {
  /** Every action resolves with its exit code (`undefined`: the process keeps running). */
  const act =
    <A extends unknown[]>(fn: (...args: A) => Promise<number | undefined>) =>
    async (...args: A) => {
      state.code = await fn(...args)
    }
  const cli = new Command('longrun')
    .description('Submit, watch and control long-running operations of a longrun server; serve and work them.')
    .version(VERSION, '-V, --version')
    .addOption(new Option('-s, --server <url>', 'the server').env('LONGRUN_SERVER').default('http://127.0.0.1:3000'))
    .addOption(
      new Option('--operations-path <path>', 'where the operations API is on the server')
        .env('LONGRUN_OPERATIONS_PATH')
        .default('/operations'),
    )
    .addOption(new Option('-t, --token <token>', 'a bearer token (JWT)').env('LONGRUN_TOKEN'))
    .addOption(new Option('-k, --session-key <key>', 'a session key').env('LONGRUN_SESSION_KEY'))
    .addOption(
      new Option('--session-header <name>', 'the header the session key goes in')
        .env('LONGRUN_SESSION_HEADER')
        .default('x-session-key'),
    )
    .option('-H, --header <line>', "a header for every request, 'Name: value' (repeatable)", collect, [])
    .option('--json', 'print JSON for scripts')
    .showHelpAfterError()
    .exitOverride()
  const globals = () => cli.opts<Globals>()
  const client = () => clientOf(globals())

  cli
    .command('submit <url>')
    .description('submit an operation: POST the data to an async route (a path on the server)')
    .option('-d, --data <json>', "the body: '{...}', @file.json, or @- for standard input")
    .option('-w, --wait', 'wait for the outcome, showing progress; exit with the outcome')
    .option('--timeout <duration>', 'with --wait: stop waiting after this long', duration)
    .option('--idempotency-key <key>', 'the Idempotency-Key (a random one otherwise, reused by retries)')
    .option('--no-progress', 'with --wait: no progress on stderr')
    .action(
      act(
        async (
          url: string,
          options: { data?: string; wait?: boolean; timeout?: number; idempotencyKey?: string; progress: boolean },
        ) => {
          const body = await readData(options.data)
          const path = url.startsWith('/') ? url : `/${url}`
          const handle = await client().submit(path, body as never, {
            ...(options.idempotencyKey ? { idempotencyKey: options.idempotencyKey } : {}),
          })
          if (options.wait) return follow(client(), handle.id, globals(), options)
          if (globals().json) print(await handle.get())
          else process.stdout.write(`${handle.id}\n`)
          return EXIT.ok
        },
      ),
    )

  cli
    .command('watch <id>')
    .description('show the progress of an operation until it ends; exit with its outcome')
    .option('--timeout <duration>', 'stop watching after this long', duration)
    .action(
      act((id: string, options: { timeout?: number }) =>
        follow(client(), id, globals(), { ...options, progress: true }),
      ),
    )

  cli
    .command('get <id>')
    .description('show an operation')
    .action(
      act(async (id: string) => {
        const op = await client().operation(id).get()
        if (globals().json) print(op)
        else process.stdout.write(`${summary(op)}\n`)
        return EXIT.ok
      }),
    )

  cli
    .command('result <id>')
    .description("print an operation's result (JSON), or write it to a file")
    .option('-o, --output <file>', 'write it here instead')
    .action(
      act(async (id: string, options: { output?: string }) => {
        const op = await client().operation(id).get()
        if (op.state !== 'succeeded') {
          const why = op.error ? `: ${op.error.code}: ${op.error.message}` : ` (${op.progress.percent}%)`
          throw new CliError(`${id} is ${op.state}${why}`, op.done ? outcomeCode(op) : EXIT.notDone)
        }
        const result = `${JSON.stringify(await client().operation(id).result(), null, 2)}\n`
        if (options.output) await writeFile(options.output, result)
        else process.stdout.write(result)
        return EXIT.ok
      }),
    )

  cli
    .command('ls')
    .description('list operations, newest first, or those meeting --where conditions')
    .option('--state <state>', 'queued, running, succeeded, failed or canceled (repeatable)', collect)
    .option('--name <name>', 'operations of this name only')
    .option('--where <condition>', "'field op value', e.g. 'input.customer like acme*' (repeatable)", collect)
    .option('--limit <n>', 'at most this many', positiveInteger)
    .option('--cursor <cursor>', 'the next page, from an earlier answer')
    .addOption(new Option('--sort <order>', 'newest or oldest first').choices(['newest', 'oldest']))
    .action(
      act(
        async (options: {
          state?: string[]
          name?: string
          where?: string[]
          limit?: number
          cursor?: string
          sort?: 'newest' | 'oldest'
        }) => {
          const page = { limit: options.limit, cursor: options.cursor, sort: options.sort }
          let result: ListPage
          if (options.where) {
            const where = parseWhere(options.where)
            if (options.state) where.state = { op: 'eq', value: oneState(options.state) }
            if (options.name) where.name = { op: 'eq', value: options.name }
            result = await client().query(where, page)
          } else {
            const states = options.state?.flatMap((state) => state.split(',')) as Operation['state'][] | undefined
            result = await client().list({ ...page, state: states, name: options.name })
          }
          process.stdout.write(globals().json ? `${JSON.stringify(result, null, 2)}\n` : `${table(result)}\n`)
          return EXIT.ok
        },
      ),
    )

  for (const [name, description] of [
    ['cancel', 'cancel an operation (a running one is asked to stop)'],
    ['retry', 'queue a failed or canceled operation again'],
  ] as const) {
    cli
      .command(`${name} <id>`)
      .description(description)
      .action(
        act(async (id: string) => {
          const op = await client().operation(id)[name]()
          if (globals().json) print(op)
          else
            process.stdout.write(`${op.id} ${op.state}${op.cancelRequested && !op.done ? ' (cancel requested)' : ''}\n`)
          return EXIT.ok
        }),
      )
  }

  cli
    .command('delete <id>')
    .description('delete a finished operation')
    .action(
      act(async (id: string) => {
        await client().operation(id).delete()
        if (globals().json) print({ id, deleted: true })
        else process.stdout.write(`${id} deleted\n`)
        return EXIT.ok
      }),
    )

  cli
    .command('stats')
    .description('count operations by state and name')
    .action(
      act(async () => {
        const stats = await client().stats()
        if (globals().json) {
          print(stats)
          return EXIT.ok
        }
        const states = ['queued', 'running', 'succeeded', 'failed', 'canceled', 'total'] as const
        const rows = new Table({ head: ['name', ...states], style: { head: [], border: [] } })
        for (const [name, counts] of Object.entries(stats.byName)) rows.push([name, ...states.map((s) => counts[s])])
        rows.push(['(all)', ...states.map((s) => stats[s])])
        process.stdout.write(`${rows.toString()}\n`)
        return EXIT.ok
      }),
    )

  addServerCommands(cli, act)
  return cli
}

function oneState(states: string[]): string {
  if (states.length !== 1 || states[0]!.includes(',')) throw new CliError('with --where, give one --state')
  return states[0]!
}

interface ServerFlags {
  store: string
  pgSchema?: string
  logLevel: string
}

function addServerCommands(
  cli: Command,
  act: <A extends unknown[]>(fn: (...args: A) => Promise<number | undefined>) => (...args: A) => Promise<void>,
): void {
  const storeOption = () =>
    new Option('--store <url>', 'memory, sqlite:<path> or a postgres:// URL (also LONGRUN_STORE, DATABASE_URL)')
  const common = (command: Command) =>
    command
      .addOption(storeOption())
      .addOption(new Option('--pg-schema <name>', 'PostgreSQL schema for the tables').env('LONGRUN_PG_SCHEMA'))
      .addOption(
        new Option('--log-level <level>', 'debug, info, warn, error or silent').env('LOG_LEVEL').default('info'),
      )

  common(cli.command('serve <module>'))
    .description("serve a module's async routes and the operations API (see docs/cli.md for the module)")
    .addOption(new Option('-p, --port <port>', 'the port').env('PORT').default('3000'))
    .addOption(new Option('--host <host>', 'the address to listen on').env('HOST').default('127.0.0.1'))
    .addOption(
      new Option('--role <role>', 'all: serve and run handlers; api: serve only, for separate workers')
        .choices(['all', 'api'])
        .env('LONGRUN_ROLE')
        .default('all'),
    )
    .action(
      act(async (module: string, flags: ServerFlags & { port: string; host: string; role: 'all' | 'api' }) => {
        const { serve } = await import('./commands.js')
        await serve(module, flags)
        return undefined
      }),
    )

  common(cli.command('worker <module>'))
    .description("run a module's handlers on a shared store, serving no HTTP")
    .option('--lease <duration>', 'how long a claim holds without a heartbeat', duration)
    .option('--poll <duration>', 'fallback poll for due operations', duration)
    .option('--grace <duration>', 'how long handlers have to stop at shutdown', duration)
    .action(
      act(async (module: string, flags: ServerFlags & { lease?: number; poll?: number; grace?: number }) => {
        const { worker } = await import('./commands.js')
        await worker(module, flags)
        return undefined
      }),
    )

  common(cli.command('migrate'))
    .description("create or upgrade the store's schema, then exit")
    .action(
      act(async (flags: ServerFlags) => {
        const { migrate } = await import('./commands.js')
        await migrate(flags)
        return EXIT.ok
      }),
    )
}

/**
 * Runs the CLI on `argv` (without `node` and the script); resolves with the exit code, or with
 * `undefined` for `serve` and `worker`, which run until a signal stops them.
 */
export async function run(argv: string[]): Promise<number | undefined> {
  const state: { code: number | undefined } = { code: EXIT.ok }
  const cli = program(state)
  for (const command of cli.commands) command.exitOverride()
  try {
    await cli.parseAsync(argv, { from: 'user' })
    return state.code
  } catch (err) {
    return report(err)
  }
}

function report(err: unknown): number {
  if (err instanceof CommanderError) {
    return err.code === 'commander.helpDisplayed' || err.code === 'commander.version' || err.exitCode === 0
      ? EXIT.ok
      : EXIT.error
  }
  if (err instanceof CliError) {
    process.stderr.write(`longrun: ${err.message}\n`)
    return err.exitCode
  }
  if (err instanceof LongrunClientError) {
    process.stderr.write(`longrun: ${err.status} ${err.code ?? ''}: ${err.message}\n`)
    return EXIT.error
  }
  const cause = (err as { cause?: { code?: string; message?: string } }).cause
  const message = cause?.code ? `${(err as Error).message} (${cause.code})` : (err as Error).message
  process.stderr.write(`longrun: ${message}\n`)
  return EXIT.error
}
