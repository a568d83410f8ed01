import { invalidOption } from '../../core/errors.js'

/** The API's OpenAPI document and docs page (docs/openapi.md). */
export interface DocsOptions {
  /** Where the document (`{path}/openapi.json`, `{path}/openapi.yaml`) and the page (`{path}`) are served. @default '/docs' */
  path?: string
  /** Serve the docs page besides the document. @default true */
  page?: boolean
  /** The document's `info`. @default { title: 'longrun API', version: '1.0.0' } */
  info?: { title: string; version: string; description?: string }
}

export interface ResolvedDocsOptions {
  path: string
  page: boolean
  info: { title: string; version: string; description?: string }
}

export function resolveDocsOptions(input: DocsOptions | boolean | undefined): ResolvedDocsOptions | undefined {
  if (input === undefined || input === false) return undefined
  const options = input === true ? {} : input
  if (typeof options !== 'object' || options === null)
    throw invalidOption('docs', 'must be true, false or { path?, page?, info? }')
  const path = (options.path ?? '/docs').replace(/\/+$/, '')
  if (!path.startsWith('/')) throw invalidOption('docs.path', "must start with '/'")
  return {
    path,
    page: options.page ?? true,
    info: options.info ?? { title: 'longrun API', version: '1.0.0' },
  }
}
