/**
 * Imports an optional peer dependency: a driver or framework that only the users of one store or
 * adapter install, and that only that store or adapter loads. When the package is missing, the
 * error names it and how to install it; any other failure to load it is rethrown as it is.
 */
export async function importPeer<T>(name: string, neededBy: string): Promise<T> {
  try {
    return (await import(name)) as T
  } catch (err) {
    const { code, message } = err as { code?: unknown; message?: unknown }
    // Node names the package it could not find; a dependency of the peer missing is another problem.
    if (code === 'ERR_MODULE_NOT_FOUND' && typeof message === 'string' && message.includes(`'${name}'`)) {
      throw new Error(`${neededBy} needs '${name}', an optional peer dependency of longrun: npm install ${name}`, {
        cause: err,
      })
    }
    throw err
  }
}
