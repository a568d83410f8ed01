// What a store's own tests use: the conformance suite every `Store` must pass, and its operation maker.
export { newOp, storeContract, T0, type OpenedStore } from './store-contract.js'
