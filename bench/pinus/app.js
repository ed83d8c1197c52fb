// The Pinus peer of the benchmarks: a connector and a chat backend serving
// the same bench routes as session-proxy's bench app (bench/src/app.rs).
'use strict';
require('reflect-metadata');
const { pinus } = require('pinus');

const app = pinus.createApp();
app.set('name', 'session-proxy-bench');
app.configure('production|development', 'connector', function () {
  app.set('connectorConfig', {
    connector: pinus.connectors.hybridconnector,
    heartbeat: 10,
    useDict: false,
    useProtobuf: false,
  });
});
app.start();
process.on('uncaughtException', function (err) {
  console.error(' Caught exception: ' + err.stack);
});
