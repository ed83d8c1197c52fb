'use strict';
exports.default = function (app) {
  return new EntryHandler(app);
};

class EntryHandler {
  constructor(app) {
    this.app = app;
  }

  // connector.entryHandler.ping: answered on the connector.
  async ping(msg, session) {
    return { code: 200 };
  }
}
