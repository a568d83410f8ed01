import { dirname } from 'node:path'
import { createRequire } from 'node:module'
import type { FastifyInstance } from 'fastify'
import { stringify } from 'yaml'
import { LongrunError } from '../../../core/errors.js'
import type { ApiDescription } from '../../mounts.js'
import { openApiDocument } from '../../openapi/document.js'
import type { ResolvedDocsOptions } from '../../openapi/options.js'

/** The files of swagger-ui-dist the page loads; nothing else of the package is served. */
const ASSETS = new Set(['/swagger-ui.css', '/swagger-ui-bundle.js', '/favicon-32x32.png'])

// Everything the page loads comes from this server: a browser refuses anything else.
const PAGE_POLICY =
  "default-src 'self'; img-src 'self' data:; style-src 'self' 'unsafe-inline'; script-src 'self'; connect-src 'self'; frame-ancestors 'self'"

const escapeHtml = (text: string) =>
  text.replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' })[c]!)

/**
 * Serves `{path}/openapi.json`, `{path}/openapi.yaml` and, with `page`, a Swagger UI page at
 * `{path}` whose assets are served from here too. The document is made once the server is ready:
 * routes are added after the plugin is registered, and none can be added after.
 */
export async function serveDocs(
  app: FastifyInstance,
  describe: () => ApiDescription,
  docs: ResolvedDocsOptions,
): Promise<void> {
  let json = ''
  let yaml = ''
  app.addHook('onReady', async () => {
    const document = openApiDocument(describe())
    json = JSON.stringify(document)
    // Shared parts written out in full, not as anchors and aliases, which some tools do not follow.
    yaml = stringify(document, { aliasDuplicateObjects: false })
  })
  const base = app.prefix + docs.path
  app.get(`${docs.path}/openapi.json`, (_request, reply) => reply.type('application/json; charset=utf-8').send(json))
  app.get(`${docs.path}/openapi.yaml`, (_request, reply) => reply.type('application/yaml; charset=utf-8').send(yaml))
  if (!docs.page) return

  // Loaded only for the page: apps that serve just the document need neither package.
  let fastifyStatic: typeof import('@fastify/static').default
  let root: string
  try {
    fastifyStatic = (await import('@fastify/static')).default
    root = dirname(createRequire(import.meta.url).resolve('swagger-ui-dist/package.json'))
  } catch (err) {
    throw new LongrunError(
      'invalid-option',
      "Option 'docs.page' needs @fastify/static and swagger-ui-dist: install them, or set page: false.",
      { cause: err },
    )
  }
  // In a context of its own: nothing the static plugin adds reaches the app's routes.
  await app.register(async (scope) => {
    await scope.register(fastifyStatic, {
      root,
      prefix: `${docs.path}/assets/`,
      decorateReply: false,
      index: false,
      allowedPath: (path) => ASSETS.has(path),
    })
  })
  const assets = escapeHtml(`${base}/assets`)
  const page = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>${escapeHtml(docs.info.title)}</title>
<link rel="icon" href="${assets}/favicon-32x32.png">
<link rel="stylesheet" href="${assets}/swagger-ui.css">
</head>
<body>
<div id="swagger-ui"></div>
<script src="${assets}/swagger-ui-bundle.js"></script>
<script src="${assets}/init.js"></script>
</body>
</html>
`
  // No validator badge: it would send the document to validator.swagger.io.
  const init = `SwaggerUIBundle(${JSON.stringify({ url: `${base}/openapi.json`, dom_id: '#swagger-ui', validatorUrl: null, deepLinking: true })})\n`
  app.get(`${docs.path}/assets/init.js`, (_request, reply) => reply.type('text/javascript; charset=utf-8').send(init))
  app.get(docs.path, (_request, reply) =>
    reply.type('text/html; charset=utf-8').header('content-security-policy', PAGE_POLICY).send(page),
  )
}
