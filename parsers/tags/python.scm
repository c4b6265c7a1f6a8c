; Definitions for the workspace symbol index. @name is the symbol, @definition.<kind> the whole definition.
(function_definition name: (identifier) @name) @definition.function
(class_definition name: (identifier) @name) @definition.class
(module (expression_statement (assignment left: (identifier) @name) @definition.constant))
