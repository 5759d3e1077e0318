import { createRequire } from 'node:module'

/**
 * Made on first use, not when the module loads, and from the module's file
 * name where import.meta.url is missing: an app bundled to CommonJS (which
 * empties import.meta) loads the plugin and its optional packages.
 */
let require: NodeJS.Require | null = null

/**
 * An optional peer dependency (`pg`, `better-sqlite3`, `@fastify/swagger-ui`),
 * loaded when `user` (what needs it, as the user names it) is used: the
 * module, or, when it is not installed, an error that says what to install.
 * Any other failure (a module missing inside the package, a native build
 * that does not load) is thrown as it is.
 */
export function requirePeer<T> (name: string, major: string, user: string): T {
  try {
    require ??= createRequire(typeof import.meta.url === 'string' ? import.meta.url : __filename)
    return require(name) as T
  } catch (err) {
    const { code, message } = err as { code?: unknown, message?: unknown }
    if (code === 'MODULE_NOT_FOUND' && typeof message === 'string' && message.startsWith(`Cannot find module '${name}'`)) {
      throw new Error(`${user} needs the optional package ${name}: npm install ${name}@${major}`, { cause: err })
    }
    throw err
  }
}
