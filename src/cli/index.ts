// `longrun/cli`: what the `longrun` command is made of, for apps that run their own processes.
export { EXIT, run } from './program.js'
export { buildServer, buildWorker, loadRoutesModule, type RoutesModule, type ServerOptions } from './server.js'
export { openStore, storeUrl, type OpenStoreOptions } from './store-url.js'
export { closeOnSignals } from './signals.js'
export { consoleLogger } from './logger.js'
