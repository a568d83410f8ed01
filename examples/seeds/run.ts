// `npm run example -- <name>`: starts the seed example `examples/seeds/<name>/main.ts`.
const EXAMPLES = ['pode', 'node-tasks', 'qbm-http', 'async-endpoints', 'async-flow']

const name = process.argv[2]
if (!name || !EXAMPLES.includes(name)) {
  console.error(`usage: npm run example -- <${EXAMPLES.join('|')}>`)
  process.exit(3)
}
await import(`./${name}/main.ts`)
