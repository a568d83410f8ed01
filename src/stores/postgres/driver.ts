import type pg from 'pg'
import { importPeer } from '../../core/optional.js'

/**
 * `pg`, an optional peer dependency: only longrun/postgres loads it, and names it when it is missing.
 * Its CommonJS exports, through `default`: pg before 8.15 has no named ESM exports.
 */
export const driver: typeof pg = (await importPeer<{ default: typeof pg }>('pg', 'longrun/postgres')).default
