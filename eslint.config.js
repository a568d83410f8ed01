import js from '@eslint/js'
import tseslint from 'typescript-eslint'

const FRAMEWORKS = ['fastify', 'fastify-*', '@fastify/*', 'express', 'hono']
const DRIVERS = ['pg', 'better-sqlite3', 'ioredis']

/** Which way imports may point (docs/architecture.md); `madge --circular` in `npm test` checks for cycles. */
const boundary = (files, patterns, message, allowTypeImports = false) => ({
  files,
  rules: {
    '@typescript-eslint/no-restricted-imports': [
      'error',
      { patterns: [{ group: patterns, message, allowTypeImports }] },
    ],
  },
})

export default tseslint.config(
  { ignores: ['dist/', 'node_modules/', 'data/', 'bench/results/', 'bench/.cache/', 'coverage/'] },
  js.configs.recommended,
  ...tseslint.configs.recommended,
  {
    rules: {
      '@typescript-eslint/no-unused-vars': ['error', { argsIgnorePattern: '^_', varsIgnorePattern: '^_' }],
      '@typescript-eslint/no-empty-function': 'off',
    },
  },
  boundary(
    ['src/core/**/*.ts'],
    [...FRAMEWORKS, ...DRIVERS, 'node:http', 'http', '**/http/**', '**/stores/**', '**/testing/**', '**/cli/**'],
    'The core knows no HTTP framework, driver, HTTP layer or store.',
  ),
  boundary(
    ['src/http/*.ts'],
    [...FRAMEWORKS, ...DRIVERS, '**/adapters/**', '**/stores/**', '**/cli/**'],
    'Neutral HTTP files import no framework, adapter, driver or store: that is what adapters/ is for.',
  ),
  boundary(['src/stores/**/*.ts'], [...FRAMEWORKS, '**/http/**', '**/cli/**'], 'Stores know nothing of HTTP.'),
  boundary(
    ['src/client/**/*.ts'],
    [...FRAMEWORKS, ...DRIVERS, 'node:*', '**/core/**', '**/http/**', '**/stores/**', '**/testing/**', '**/cli/**'],
    'The client runs in browsers: fetch and web APIs only, no Node built-ins, and no server code (`import type` only).',
    true,
  ),
)
