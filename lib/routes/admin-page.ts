/**
 * The admin page: one self-contained HTML document (no build step, no
 * external assets) that calls the admin REST routes. Data is put in the page
 * with textContent only, never as HTML.
 *
 * Authentication: the page sends the cookies of the site, and, when it has
 * one, `Authorization: Bearer <token>` with a token taken from `?token=` (kept
 * in sessionStorage) or typed in when a route answers 401/403.
 */
export function adminPage (prefix: string, pagePath: string): string {
  return `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>canvas-store admin</title>
<link rel="icon" href="data:,">
<style>
  body { font: 14px/1.4 system-ui, sans-serif; margin: 2rem; color: #222; }
  h1 { font-size: 1.3rem; } h2 { font-size: 1.1rem; margin-top: 2rem; }
  table { border-collapse: collapse; min-width: 40rem; }
  th, td { text-align: left; padding: .35rem .7rem; border-bottom: 1px solid #ddd; }
  tr.room { cursor: pointer; } tr.room:hover, tr.selected { background: #eef4ff; }
  button { font: inherit; padding: .2rem .6rem; cursor: pointer; }
  .muted { color: #777; } .error { color: #b00020; } code { font-size: 12px; }
  #auth { display: none; margin: 1rem 0; }
</style>
</head>
<body>
<h1>canvas-store admin</h1>
<p class="muted">Rooms loaded on this server. Refreshes every 2 seconds. <span id="status"></span></p>
<form id="auth"><label>Admin token <input id="token" type="password" autocomplete="off"></label> <button>Use</button></form>
<table id="rooms"><thead><tr><th>Room</th><th>Sessions</th><th>Counter</th><th>Keys</th><th>Size</th></tr></thead><tbody></tbody></table>
<h2 id="sessions-title">Sessions</h2>
<table id="sessions"><thead><tr><th>Session</th><th>Client</th><th>Permissions</th><th>Metadata</th><th></th></tr></thead><tbody></tbody></table>
<script>
(() => {
  // The admin routes sit beside the page: read from the page's own address, which holds the values of any
  // parameters in the app's prefix (such as /t/:tenant); the prefix as registered otherwise.
  const page = ${JSON.stringify(pagePath).replace(/</g, '\\u003c')}
  const base = location.pathname.endsWith(page) ? location.pathname.slice(0, -page.length) : ${JSON.stringify(prefix).replace(/</g, '\\u003c')}
  // A ?token= stays in the address bar: hooks that read it for the page itself keep working on reload.
  const params = new URLSearchParams(location.search)
  if (params.has('token')) sessionStorage.setItem('canvas-store-admin-token', params.get('token'))
  let selected = null
  const status = document.getElementById('status')
  const auth = document.getElementById('auth')

  async function api (method, path, body) {
    const headers = {}
    const token = sessionStorage.getItem('canvas-store-admin-token')
    if (token) headers.authorization = 'Bearer ' + token
    if (body !== undefined) headers['content-type'] = 'application/json'
    const res = await fetch(base + path, { method, headers, credentials: 'same-origin', body: body === undefined ? undefined : JSON.stringify(body) })
    if (res.status === 401 || res.status === 403) {
      auth.style.display = 'block'
      for (const body of document.querySelectorAll('tbody')) body.replaceChildren()
      throw new Error('not authorized (' + res.status + ')')
    }
    if (!res.ok && res.status !== 204) throw new Error(method + ' ' + path + ': ' + res.status)
    return res.status === 204 ? null : res.json()
  }

  function cell (row, text, cls) {
    const td = row.insertCell()
    td.textContent = text
    if (cls) td.className = cls
    return td
  }

  function kilobytes (n) {
    return n < 1024 ? n + ' B' : n < 1048576 ? (n / 1024).toFixed(1) + ' KiB' : (n / 1048576).toFixed(1) + ' MiB'
  }

  function button (td, label, onclick) {
    const b = document.createElement('button')
    b.textContent = label
    b.addEventListener('click', async (e) => { e.stopPropagation(); try { await onclick(); await refresh() } catch (err) { status.textContent = err.message; status.className = 'error' } })
    td.appendChild(b)
    return b
  }

  async function refresh () {
    try {
      const rooms = await api('GET', '/rooms')
      auth.style.display = 'none'
      // Built aside and swapped in at once, so rows never flicker.
      const tbody = document.createElement('tbody')
      for (const room of rooms) {
        const row = tbody.insertRow()
        row.className = 'room' + (room.roomId === selected ? ' selected' : '')
        row.dataset.roomId = room.roomId
        cell(row, room.roomId); cell(row, String(room.sessionCount)); cell(row, String(room.timestamp)); cell(row, String(room.documentSize)); cell(row, kilobytes(room.documentBytes))
        row.addEventListener('click', () => { selected = room.roomId; refresh() })
      }
      if (rooms.length === 0) cell(tbody.insertRow(), 'No room is loaded.', 'muted').colSpan = 5
      document.querySelector('#rooms tbody').replaceWith(tbody)
      if (selected !== null && !rooms.some((r) => r.roomId === selected)) selected = null
      await refreshSessions()
      status.textContent = 'Updated ' + new Date().toLocaleTimeString()
      status.className = 'muted'
    } catch (err) {
      status.textContent = err.message
      status.className = 'error'
    }
  }

  async function refreshSessions () {
    const tbody = document.createElement('tbody')
    document.getElementById('sessions-title').textContent = selected === null ? 'Sessions (click a room)' : 'Sessions of ' + selected
    if (selected === null) { document.querySelector('#sessions tbody').replaceWith(tbody); return }
    const room = encodeURIComponent(selected)
    const sessions = await api('GET', '/rooms/' + room + '/sessions')
    for (const s of sessions) {
      const row = tbody.insertRow()
      row.dataset.sessionId = s.sessionId
      row.dataset.clientId = s.clientId
      cell(row, s.sessionId.slice(0, 8)).title = s.sessionId
      cell(row, s.clientId)
      const perm = cell(row, s.permissions + ' ')
      perm.className = 'permissions'
      const next = s.permissions === 'readwrite' ? 'readonly' : 'readwrite'
      button(perm, 'make ' + next, () => api('PATCH', '/rooms/' + room + '/sessions/' + encodeURIComponent(s.sessionId), { permissions: next })).className = 'toggle'
      const meta = cell(row, '')
      if (s.metadata !== undefined) { const c = document.createElement('code'); c.textContent = JSON.stringify(s.metadata); meta.appendChild(c) }
      button(cell(row, ''), 'disconnect', () => api('DELETE', '/rooms/' + room + '/sessions/' + encodeURIComponent(s.sessionId))).className = 'disconnect'
    }
    if (sessions.length === 0) cell(tbody.insertRow(), 'No session.', 'muted').colSpan = 5
    document.querySelector('#sessions tbody').replaceWith(tbody)
  }

  auth.addEventListener('submit', (e) => {
    e.preventDefault()
    sessionStorage.setItem('canvas-store-admin-token', document.getElementById('token').value)
    refresh()
  })
  refresh()
  setInterval(refresh, 2000)
})()
</script>
</body>
</html>
`
}
