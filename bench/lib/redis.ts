import { Redis } from 'ioredis'
import { QUEUE_NAME, QUEUE_PREFIX, redisConnection } from './shared.js'

async function withRedis<T>(url: string, use: (redis: Redis) => Promise<T>): Promise<T> {
  const redis = new Redis({
    ...redisConnection(url),
    lazyConnect: true,
    connectTimeout: 2_000,
    maxRetriesPerRequest: 1,
    retryStrategy: () => null,
  })
  redis.on('error', () => {}) // surfaced through the command's rejection
  try {
    await redis.connect()
    return await use(redis)
  } finally {
    redis.disconnect()
  }
}

/** The Redis server's version; throws a clear error when it does not answer. */
export async function checkRedis(url: string): Promise<string> {
  try {
    return await withRedis(url, async (redis) => {
      if ((await redis.ping()) !== 'PONG') throw new Error('PING did not answer PONG')
      const info = await redis.info('server')
      return /redis_version:(\S+)/.exec(info)?.[1] ?? 'unknown'
    })
  } catch (err) {
    throw new Error(
      `Redis is not reachable at ${url} (${(err as Error).message}).\n` +
        'The BullMQ baselines need it. Start it, for example:\n' +
        '  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port 6379 --save "" --appendonly no\n' +
        'or leave BullMQ out with --only submit,status,scale (the targets against BullMQ are then not checked).',
    )
  }
}

/** Deletes every key of the bench queue, so that each BullMQ run starts from an empty queue. */
export async function flushQueue(url: string): Promise<number> {
  return withRedis(url, async (redis) => {
    let cursor = '0'
    let deleted = 0
    do {
      const [next, keys] = await redis.scan(cursor, 'MATCH', `${QUEUE_PREFIX}:${QUEUE_NAME}:*`, 'COUNT', 1000)
      cursor = next
      if (keys.length > 0) deleted += await redis.unlink(...keys)
    } while (cursor !== '0')
    return deleted
  })
}
