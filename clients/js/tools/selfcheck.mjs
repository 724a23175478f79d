// Runs the suite against tools/mock-gateway.mjs, to check the suite's own
// mechanics without the real gateway. `npm run selfcheck`.
import {spawn} from "node:child_process"
import {startMock} from "./mock-gateway.mjs"

const server = await startMock()
const url = `ws://127.0.0.1:${server.address().port}/socket`
const child = spawn(process.execPath, ["--test", "--test-force-exit", "--test-reporter=spec", ...(process.argv.slice(2).length ? process.argv.slice(2) : ["test/"])],
  {stdio: "inherit", env: {...process.env, PHXGATE_URL: url}})
child.on("exit", code => { server.close(); server.closeAllConnections?.(); process.exit(code ?? 1) })
