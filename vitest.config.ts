import { readFileSync } from 'node:fs'
import { defineConfig } from 'vitest/config'

// Vite does not resolve a package's imports of itself (`longrun/fastify` from inside longrun), which
// Node and tsc do through `exports`: map each export's `longrun-source` entry explicitly.
const pkg = JSON.parse(readFileSync(new URL('./package.json', import.meta.url), 'utf8')) as {
  name: string
  exports: Record<string, { 'longrun-source': string }>
}
const selfImports = Object.entries(pkg.exports).map(([subpath, targets]) => ({
  find: new RegExp(`^${(pkg.name + subpath.slice(1)).replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')}$`),
  replacement: new URL(targets['longrun-source'], import.meta.url).pathname,
}))

export default defineConfig({
  resolve: { conditions: ['longrun-source'], alias: selfImports },
  test: {
    include: ['src/**/*.test.ts', 'test/**/*.test.ts'],
    testTimeout: 30_000,
    hookTimeout: 30_000,
    // Crash tests start child servers; two cores are shared by everything.
    maxWorkers: 2,
    minWorkers: 1,
  },
})
