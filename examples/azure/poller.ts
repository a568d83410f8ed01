import {
  createHttpPoller,
  type CreateHttpPollerOptions,
  type OperationResponse,
  type OperationState,
} from '@azure/core-lro'

/**
 * Submits `body` to a longrun async route and polls it with Azure's own poller, unmodified: the
 * 202's `Operation-Location`, the status's `status` and `resourceLocation`, and `Retry-After` drive it.
 */
export function azurePoller<Result>(
  base: string,
  path: string,
  body: unknown,
  options: CreateHttpPollerOptions<Result, OperationState<Result>> = {},
) {
  // The part an Azure SDK client's pipeline plays: send, and refuse an error status.
  async function send(method: string, url: string, payload?: unknown): Promise<OperationResponse<never>> {
    const response = await fetch(new URL(url, base), {
      method,
      ...(payload === undefined
        ? {}
        : { headers: { 'content-type': 'application/json' }, body: JSON.stringify(payload) }),
    })
    const text = await response.text()
    const parsed: unknown = text === '' ? undefined : JSON.parse(text)
    if (!response.ok) throw new Error(`${method} ${url} answered ${response.status}: ${text}`)
    return {
      flatResponse: parsed as never,
      rawResponse: {
        statusCode: response.status,
        headers: Object.fromEntries(response.headers),
        request: { method, url },
        body: parsed,
      },
    }
  }
  return createHttpPoller<Result, OperationState<Result>>(
    { sendInitialRequest: () => send('POST', path, body), sendPollRequest: (location) => send('GET', location) },
    options,
  )
}
