/** Who is calling, as the authentication hook found out. */
export interface Principal {
  id: string
  groups?: string[]
  roles?: string[]
  scopes?: string[]
}

/** Who a permission is granted to; anyone matching one entry has it. */
export interface AccessList {
  users?: string[]
  groups?: string[]
  roles?: string[]
  scopes?: string[]
}

/** Per-definition grants beyond the owner, who always may read and write. */
export interface Permissions {
  /** Status, result, error, history, list, stats. */
  read?: AccessList
  /** Cancel, retry, delete; and read, since changing an operation means seeing it. */
  write?: AccessList
}

export interface AccessPolicy {
  /** Principals with this role may read and write every operation. */
  adminRole?: string
}

/** Whether `caller` matches an entry of `list`. */
export function granted(list: AccessList | undefined, caller: Principal | undefined): boolean {
  if (!list || !caller) return false
  const any = (granted: string[] | undefined, held: string[] | undefined) =>
    granted !== undefined && held !== undefined && held.some((h) => granted.includes(h))
  return (
    (list.users?.includes(caller.id) ?? false) ||
    any(list.groups, caller.groups) ||
    any(list.roles, caller.roles) ||
    any(list.scopes, caller.scopes)
  )
}

/** Whether `caller` may read operations under `permissions`: a `write` grant includes read. */
export function mayRead(permissions: Permissions | undefined, caller: Principal | undefined): boolean {
  return granted(permissions?.read, caller) || granted(permissions?.write, caller)
}

/** Whether `caller` may change operations under `permissions`. */
export function mayWrite(permissions: Permissions | undefined, caller: Principal | undefined): boolean {
  return granted(permissions?.write, caller)
}
