// Settings both demo processes (API server and worker) read from the environment, so that they agree.

export type Role = 'all' | 'api'

/**
 * LONGRUN_ROLE: `all` (default) serves the API and runs handlers in one process; `api` only serves
 * the API, leaving the handlers to `npm run worker` processes on the same shared store.
 */
export function roleFromEnv(env: NodeJS.ProcessEnv = process.env): Role {
  const role = env.LONGRUN_ROLE || 'all'
  if (role !== 'all' && role !== 'api') throw new Error(`LONGRUN_ROLE must be 'all' or 'api', got '${role}'`)
  return role
}

/** Every waiting period can be shortened from the environment, so that crash tests run in seconds. */
export function timingsFromEnv(env: NodeJS.ProcessEnv = process.env): {
  lease?: number
  poll?: number
  grace?: number
} {
  const ms = (name: string) => {
    const value = env[name]
    if (!value) return undefined
    const n = Number(value)
    if (!(n >= 0)) throw new Error(`${name} must be a number of milliseconds, got '${value}'`)
    return n
  }
  const [lease, poll, grace] = [ms('LONGRUN_LEASE_MS'), ms('LONGRUN_POLL_MS'), ms('LONGRUN_GRACE_MS')]
  return {
    ...(lease !== undefined ? { lease } : {}),
    ...(poll !== undefined ? { poll } : {}),
    ...(grace !== undefined ? { grace } : {}),
  }
}
