import { SignJWT } from 'jose'

// Mints a demo bearer token: npm run token -- <user> [--roles admin,ops] [--groups g1] [--scope "a b"] [--ttl 1h]
const [user, ...rest] = process.argv.slice(2)
const secret = process.env.LONGRUN_JWT_SECRET
if (!user || !secret) {
  console.error(
    'usage: LONGRUN_JWT_SECRET=<secret> npm run token -- <user> [--roles a,b] [--groups a,b] [--scope "a b"] [--ttl 1h]',
  )
  process.exit(2)
}
const flag = (name: string) => {
  const i = rest.indexOf(`--${name}`)
  return i === -1 ? undefined : rest[i + 1]
}
const list = (value: string | undefined) => (value ? value.split(',').filter(Boolean) : undefined)

const token = await new SignJWT({
  ...(list(flag('roles')) ? { roles: list(flag('roles')) } : {}),
  ...(list(flag('groups')) ? { groups: list(flag('groups')) } : {}),
  ...(flag('scope') ? { scope: flag('scope') } : {}),
})
  .setProtectedHeader({ alg: 'HS256' })
  .setSubject(user)
  .setIssuedAt()
  .setExpirationTime(flag('ttl') ?? '1h')
  .sign(new TextEncoder().encode(secret))
console.log(token)
