import t from 'tap'
import { build, connect } from './helper.js'

t.test('two peers: patch is acked and broadcast', async (t) => {
  const app = await build(t)
  const a = await connect(app, { roomId: 'r1', clientId: 'a' })
  const b = await connect(app, { roomId: 'r1', clientId: 'b' })
  await a.join()
  await b.join()
  const bcast = b.nextOfType('patch')
  const ack = a.nextOfType('ack')
  a.send({ type: 'patch', messageId: 'm1', documentPatches: [{ 'e1/Pos': { _exists: true, x: 1 } }] })
  t.same(await ack, { type: 'ack', messageId: 'm1', timestamp: 1 })
  t.same(await bcast, { type: 'patch', clientId: 'a', documentPatches: [{ 'e1/Pos': { _exists: true, x: 1 } }], timestamp: 1 })
  await a.close()
  await b.close()
})
