export interface SqliteStoreOptions {
  /** Database file, created with its folder when missing; `':memory:'` for a throwaway one. */
  path: string
  /**
   * `FULL` makes every acknowledged submission, outcome, cancel, retry and delete survive a power
   * loss (claims, heartbeats and progress skip the fsync: losing them loses no promise); `NORMAL`
   * makes writes survive a process crash only.
   * @default 'FULL'
   */
  synchronous?: 'FULL' | 'NORMAL'
}
